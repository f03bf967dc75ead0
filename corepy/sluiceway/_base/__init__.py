"""The ground floor: what the compiled modules import from Python.

``errors`` (the Error type every layer raises) and ``limits`` (what the
compiled limits and their pure-Python reference share). Nothing here imports
from the rest of the package, so a compiled module can import it while the
package itself is still loading. The public names are re-exported by
``sluiceway.errors`` and ``sluiceway.limits``.
"""
