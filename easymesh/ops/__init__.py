"""
Operations: service-manager notification (L{sdnotify}) and Prometheus
metrics (L{metrics}).
"""
