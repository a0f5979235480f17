"""The shared surface is abstract: a family that leaves out part of it fails when built."""
import pytest

from mambakit.config import MambaConfig
from mambakit.models import LanguageModel
from mambakit.models.mixer_lm import MixerLM
from mambakit.modules.s4 import LTIMixer

CONFIG = MambaConfig(d_model=16, n_layer=1, vocab_size=10)


def test_a_family_without_its_mixer_fails_when_built():
    class NoMixer(MixerLM):
        config_class = MambaConfig

    with pytest.raises(TypeError, match="make_mixer"):
        NoMixer(CONFIG)


def test_a_language_model_without_step_fails_when_built():
    class NoStep(LanguageModel):
        config_class = MambaConfig

        def forward(self, input_ids, cache=None, attention_mask=None):
            return input_ids

        def allocate_cache(self, batch_size, max_seqlen=None):
            return None

    with pytest.raises(TypeError, match="step"):
        NoStep(CONFIG)


def test_an_lti_mixer_without_its_kernel_fails_when_built():
    class NoKernel(LTIMixer):
        def discrete(self):
            raise AssertionError("not reached")

    with pytest.raises(TypeError, match="kernel"):
        NoKernel(4, 4)
