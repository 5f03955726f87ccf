"""edgepilot.draw: the drawing kit. Traffic-light scenes rendered procedurally with numpy and
OpenCV only (no torch): training data (`edgepilot.train`), the synthetic camera of the live
demo (`edgepilot.live`) and deploy bundles on boards all draw with it.

    >>> from edgepilot.draw import stoplight, scenes
    >>> image = stoplight.render_scene(np.random.default_rng(0), stoplight.LABELS.index("red"),
    ...                                320, 240)
    >>> street, boxes, labels = scenes.render_street(np.random.default_rng(0))

`stoplight`: one light per image, labelled (the classifier's data); `scenes`: street scenes
with several lights and their boxes (the detector's data). Photographic backgrounds need
scikit-image (the ``export`` extra); every other background is drawn.
"""
