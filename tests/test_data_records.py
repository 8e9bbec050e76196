"""The hand-written Example encoder against TensorFlow's own protobuf serialisation, byte for byte."""

import pytest

from hpcvision.data.records import Box, encode_example


def _reference(tf, *, encoded, filename, height, width, label, synset, text, boxes):
    def ints(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    def floats(values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    def strings(values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))

    feature = {
        "image/height": ints([height]), "image/width": ints([width]), "image/channels": ints([3]),
        "image/colorspace": strings([b"RGB"]), "image/format": strings([b"JPEG"]),
        "image/class/label": ints([label]), "image/class/synset": strings([synset.encode()]),
        "image/class/text": strings([text.encode()]), "image/filename": strings([filename.encode()]),
        "image/encoded": strings([encoded]), "image/object/bbox/label": ints([label] * len(boxes)),
    }
    for side in ("xmin", "xmax", "ymin", "ymax"):
        feature[f"image/object/bbox/{side}"] = floats([getattr(b, side) for b in boxes])
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


@pytest.mark.parametrize("boxes", [(), (Box(0.1, 0.2, 0.7, 0.9),), (Box(0, 0, 1, 1), Box(0.25, 0.5, 0.75, 0.625))])
@pytest.mark.parametrize("size", [(32, 48), (20000, 300)])  # a side above 2**14 takes the long varint path
def test_encode_example_matches_tensorflow_byte_for_byte(boxes, size):
    tf = pytest.importorskip("tensorflow")
    fields = dict(encoded=bytes(range(256)) * 70, filename="n01440764_10026.JPEG", height=size[0], width=size[1],
                  label=1000, synset="n01440764", text="tench, Tinca tinca", boxes=boxes)
    assert encode_example(**fields) == _reference(tf, **fields)
