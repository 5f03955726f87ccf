"""edgepilot.live: the live demo, an application built on the runtime. A camera (or a video, a
stream, the synthetic street) feeds a capture thread, an inference thread runs the model on
the newest frame, and the result is drawn and shown in a window, a web page or a recording.

- `camera`: frame sources and the capture thread; `newest`: the one-slot mailbox between them.
- `loop`: the live loop, smoothing and the GO/STOP decision; `tracker`: detections over time.
- `overlay`: drawing results on frames; `web`: the live page; `window`: the OpenCV window.
- `webcam`: `edgepilot webcam` and a bundle's ``run.py --serve``.

The runtime (`edgepilot.runtime`) never imports this package.
"""
