"""edgepilot.devices: profiles of edge targets (format, precision, delegate per device).

Kept torch-free like the runtime. The profiles themselves are tracked as their own piece of work.
"""
