"""
Integration tests: real C{twistd easymesh} processes on loopback ports,
driven with plain HTTP clients, in front of a small test app whose every
misbehaviour the tests choose (see L{tests.integration.app}).
"""
