"""pytest plugin of the conformance kit (entry point ``pytest11: cpimgw-conformance``).

Loaded in every pytest session of an environment where cpimgw is installed, so it imports
nothing heavy at import time.
"""
