"""Fixtures several test files share: small random models saved once per session (no downloads)."""
import pytest
import torch

from tiny_models import dummy_tiny_generator


@pytest.fixture(scope="session")
def gen_dir(tmp_path_factory):
    """A generator run folder holding a tiny random generator (32 px); tests read it, never write into it."""
    folder = tmp_path_factory.mktemp("gen")
    dummy_tiny_generator().save(folder)
    return folder


@pytest.fixture(scope="session")
def seg_dir(tmp_path_factory):
    """A segmenter run folder: a random tiny Segformer trained-at size 32 (seeded)."""
    from anomalign.segmenter.model import Segmenter

    folder = tmp_path_factory.mktemp("seg")
    torch.manual_seed(0)
    Segmenter("tiny").save(folder, {"size": 32})
    return folder
