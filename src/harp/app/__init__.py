"""app: the command line and what only it needs (output files, ``harp inspect``).

The top floor: it parses, builds configs and a run context, calls one library
function and prints. No selection logic lives here.
"""
