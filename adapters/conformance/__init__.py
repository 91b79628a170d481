"""The shipped conformance kit: translation cases (data), the runner, grades and reports.

DESIGN.md rule 7 ("ship the test kit"): the suite that checks cpimgw's own adapters is the
one plugin authors run on theirs, from the command line (``cpimgw conformance``) or from
pytest (subclass the shipped test class).
"""
