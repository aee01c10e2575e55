#!/usr/bin/env python3
"""Dumps every event of the TensorBoard event files in a folder as JSON, read with TensorBoard's
own reader: what `tensorboard --logdir DIR` would show. The test of `segtrain train --tensorboard`
(Tests/SegtrainCLITests/Train/TensorBoardTests.swift) runs it.

    python3 scripts/read-tensorboard.py DIR

Prints {"files": [names, in TensorBoard's reading order], "events": [{"file", "wall_time", "step",
"file_version"?, "values": [{"tag", "plugin", "value"} | {"tag", "plugin": "images", "width",
"height", "png_base64"}]}]}. Each file is read twice: record by record with TensorBoard's strict
record reader (tensorboard.compat.tensorflow_stub: both masked CRC-32Cs of every record checked; any
damage is an error here, exit 1), then through EventFileLoader, the loader TensorBoard's backend
uses (it converts simple values and images to its tensor summaries, as the scalar and image
dashboards read them). EventFileLoader stops quietly at a damaged record, so the two counts must agree.
Exits 1 with one line if tensorboard is not importable: the test must not pass without it.
"""
import base64
import json
import os
import sys

try:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.tensorflow_stub import errors, pywrap_tensorflow
    from tensorboard.util import tensor_util
except ImportError as e:
    sys.exit(f"read-tensorboard.py: cannot import tensorboard ({e}); run scripts/install-test-python.sh")


def strict_record_count(path):
    reader = pywrap_tensorflow.PyRecordReader_New(path)
    count = 0
    while True:
        try:
            reader.GetNext()
        except errors.OutOfRangeError:
            return count
        except errors.DataLossError as e:
            sys.exit(f"read-tensorboard.py: {path}: record {count + 1}: {e.message}")
        count += 1


def value_json(value):
    plugin = value.metadata.plugin_data.plugin_name
    array = tensor_util.make_ndarray(value.tensor)
    if plugin == "scalars":
        return {"tag": value.tag, "plugin": plugin, "value": float(array.item())}
    if plugin == "images":
        # [width, height, encoded image...] as strings (tensorboard/plugins/image/summary.py).
        width, height, png = array[0], array[1], array[2]
        return {"tag": value.tag, "plugin": plugin, "width": int(width), "height": int(height),
                "png_base64": base64.b64encode(png).decode("ascii")}
    sys.exit(f"read-tensorboard.py: tag {value.tag}: unexpected plugin {plugin!r}")


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: read-tensorboard.py DIR")
    folder = sys.argv[1]
    # TensorBoard reads a run's files in name order (event_accumulator / directory_watcher).
    names = sorted(n for n in os.listdir(folder) if "tfevents" in n)
    events = []
    for name in names:
        path = os.path.join(folder, name)
        expected = strict_record_count(path)
        loaded = 0
        for event in EventFileLoader(path).Load():
            loaded += 1
            entry = {"file": name, "wall_time": event.wall_time, "step": event.step}
            if event.HasField("file_version"):
                entry["file_version"] = event.file_version
            entry["values"] = [value_json(v) for v in event.summary.value]
            events.append(entry)
        if loaded != expected:
            sys.exit(f"read-tensorboard.py: {path}: EventFileLoader read {loaded} of {expected} records")
    json.dump({"files": names, "events": events}, sys.stdout)


if __name__ == "__main__":
    main()
