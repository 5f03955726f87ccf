"""Run inside MediaPipe's own virtualenv (it pins its own OpenCV): classify images with
MediaPipe Tasks' ImageClassifier from the .tflite files alone, and parse their metadata with
the official metadata schema that MediaPipe ships.

Usage: python mediapipe_classify.py IMAGES.npy MODEL.tflite... > results.json
"""

import io
import json
import sys
import zipfile

import mediapipe as mp
import numpy as np
from mediapipe.tasks.metadata import metadata_schema_py_generated as md_schema
from mediapipe.tasks.metadata import schema_py_generated as tfl_schema
from mediapipe.tasks.python import BaseOptions
from mediapipe.tasks.python.vision import ImageClassifier, ImageClassifierOptions


def official_metadata(raw: bytes) -> dict:
    model = tfl_schema.Model.GetRootAsModel(raw, 0)
    entries = [model.Metadata(i) for i in range(model.MetadataLength())]
    index = next(e.Buffer() for e in entries if e.Name() == b"TFLITE_METADATA")
    buffer = model.Buffers(index).DataAsNumpy().tobytes()
    assert md_schema.ModelMetadata.ModelMetadataBufferHasIdentifier(buffer, 0)
    meta = md_schema.ModelMetadataT.InitFromObj(
        md_schema.ModelMetadata.GetRootAsModelMetadata(buffer, 0))
    image = meta.subgraphMetadata[0].inputTensorMetadata[0]
    scores = meta.subgraphMetadata[0].outputTensorMetadata[0]
    labels_file = scores.associatedFiles[0]
    archive = zipfile.ZipFile(io.BytesIO(raw))
    rgb = md_schema.ColorSpaceType.RGB
    axis_labels = md_schema.AssociatedFileType.TENSOR_AXIS_LABELS
    return {
        "image_properties": image.content.contentPropertiesType
        == md_schema.ContentProperties.ImageProperties,
        "color_space_rgb": image.content.contentProperties.colorSpace == rgb,
        "mean": [float(v) for v in image.processUnits[0].options.mean],
        "std": [float(v) for v in image.processUnits[0].options.std],
        "labels_file": labels_file.name.decode(),
        "labels_are_axis_labels": labels_file.type == axis_labels,
        "labels": archive.read(labels_file.name.decode()).decode().split(),
    }


def classify(path: str, images: np.ndarray) -> dict:
    options = ImageClassifierOptions(base_options=BaseOptions(model_asset_path=path),
                                     max_results=-1)
    try:
        classifier = ImageClassifier.create_from_options(options)
    except Exception as err:  # MediaPipe refuses models it cannot feed (e.g. int8 inputs)
        return {"error": str(err).splitlines()[0]}
    top, scores = [], []
    with classifier:
        for image in images:
            result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB,
                                                  data=np.ascontiguousarray(image)))
            categories = sorted(result.classifications[0].categories, key=lambda c: c.index)
            best = max(categories, key=lambda c: c.score)
            top.append(best.category_name)
            scores.append([c.score for c in categories])
    return {"labels": top, "scores": scores}


def main() -> None:
    images = np.load(sys.argv[1])
    results = {}
    for path in sys.argv[2:]:
        raw = open(path, "rb").read()
        results[path] = {"metadata": official_metadata(raw), **classify(path, images)}
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
