"""
The filters that ship with easymesh, as plugin drop-ins: a third-party
package adds its own the same way.
"""

from easymesh.filters.plugin import FilterPlugin

ratelimit = FilterPlugin(
    "ratelimit",
    "easymesh.filters.ratelimit",
    "Token bucket: rate=N,burst=N,max_wait=SECONDS,max_queue=N; 429 beyond it.",
)
