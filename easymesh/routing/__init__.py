"""Routing: matching requests to routes and what routes do."""
