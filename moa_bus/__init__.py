"""moa's NATS side: the service (service/), the command line `moa` (cli/) and the lab (lab/).

Imports run one way: lab -> cli -> service -> datapath -> schemas.
"""
