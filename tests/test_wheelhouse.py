"""The offline install's wheel selection (tools/wheelhouse.py): what a target's platform takes, what it brings
itself."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("wheelhouse", Path(__file__).parent.parent / "tools" / "wheelhouse.py")
wheelhouse = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wheelhouse)


def test_a_glibc_target_takes_every_older_manylinux_wheel():
    tags = wheelhouse.compatible_platforms("manylinux_2_28_x86_64")
    assert tags[0] == "manylinux_2_28_x86_64" and tags[-1] == "manylinux1_x86_64"
    assert "manylinux2014_x86_64" in tags and "manylinux_2_17_x86_64" in tags and "manylinux_2_29_x86_64" not in tags
    assert wheelhouse.compatible_platforms("macosx_11_0_arm64") == ["macosx_11_0_arm64"]


def test_the_target_brings_its_own_torch_and_cuda_libraries():
    own = [
        name for name in ("torch", "triton", "nvidia-cublas-cu12", "cuda-bindings") if wheelhouse.TARGET_OWN.match(name)
    ]
    assert own == ["torch", "triton", "nvidia-cublas-cu12", "cuda-bindings"]
    assert not wheelhouse.TARGET_OWN.match("transformers") and not wheelhouse.TARGET_OWN.match("torchvision-extra")
    assert (
        wheelhouse._name("PyYAML==6.0.4") == "pyyaml" and wheelhouse._name("hyperfitting[all]==0.1") == "hyperfitting"
    )
