"""
Filters: the chain a listener runs every request through, and the built-in
filters (each also shipped as a plugin drop-in in C{twisted/plugins}).
"""
