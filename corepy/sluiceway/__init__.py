"""sluiceway: a programmable HTTP reverse-proxy framework.

Phase hooks are written in Python; parsing, the event loop, pooling,
load-balancing selection and limits are compiled.
"""

__version__ = "0.1.0.dev0"
