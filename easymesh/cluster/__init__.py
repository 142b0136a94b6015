"""
Clusters: named sets of upstream endpoints, with load balancing, circuit
breakers, outlier detection, health checks and discovery.
"""
