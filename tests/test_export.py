"""export.onnx / export.safetensors: files a user can load elsewhere, checked independently."""

from __future__ import annotations

import numpy as np
import onnxruntime
import torch
from datafiles import write_image_folder
from safetensors.torch import load_file

from prunebench.data.image_folder import load
from prunebench.models.mlp import MLP


def test_onnx_and_safetensors_of_a_neuron_pruned_model_on_an_image_folder(cli, tmp_path):
    write_image_folder(tmp_path / "pets", n_train=8, n_test=4)
    results, out = cli(["dataset=image_folder", f"dataset.path={tmp_path / 'pets'}",
                        "dataset.image_size=6", f"dataset.root={tmp_path / 'data'}",
                        "model.hidden=[16]", "strategy.granularity=neuron",
                        "strategy.amount=0.5", "export.onnx=true", "export.safetensors=true",
                        "train.epochs=2"])
    assert results["status"] == "ok" and results["dense"]["accuracy"] > 0.5
    folder = out / "checkpoints"
    exports = {e["file"]: e for e in results["exports"]}
    assert set(exports) == {"checkpoints/final.onnx", "checkpoints/compact.onnx",
                            "checkpoints/final.safetensors"}
    for name, e in exports.items():
        assert e["size"] == (out / name).stat().st_size > 0
    # the safetensors file holds final.pt's weights exactly
    final = torch.load(folder / "final.pt", weights_only=True)
    tensors = load_file(str(folder / "final.safetensors"))
    assert tensors.keys() == final.keys()
    assert all(torch.equal(tensors[k], final[k]) for k in final)
    # onnxruntime against PyTorch on the test split, at a batch size other than the export's
    model = MLP((3, 6, 6), 3, hidden=[16]).eval()
    model.load_state_dict(final)
    data = load(str(tmp_path / "pets"), image_size=6, root=str(tmp_path / "data"))
    x = ((data.test.x.float() / 255 - data.mean.view(1, 3, 1, 1))
         / data.std.view(1, 3, 1, 1))[:5]
    with torch.no_grad():
        expected = model(x).numpy()
    for name in ("final.onnx", "compact.onnx"):
        session = onnxruntime.InferenceSession(str(folder / name),
                                               providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert got.shape == (5, 3)
        np.testing.assert_allclose(got, expected, atol=1e-4)
        assert exports[f"checkpoints/{name}"]["max_abs_diff"] < 1e-4
    # half the hidden units are gone from the compact model, so from its file
    assert exports["checkpoints/compact.onnx"]["size"] < exports["checkpoints/final.onnx"]["size"]
