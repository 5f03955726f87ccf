"""edgepilot.train: datasets edgepilot can generate offline, model architectures, training.

Needs the ``export`` extra (torch). `stoplight` is numpy/OpenCV only.
"""
