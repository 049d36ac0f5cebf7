"""RetroMAE runs in the shared training loop: a run interrupted after a checkpoint resumes there and
ends with the weights (and loss records) of an uninterrupted run, across an epoch boundary."""

from __future__ import annotations

import pytest
import torch

from tasks.training import latest_checkpoint
from tasks.training.retromae import RetroMAEConfig, train_retromae
from tests.support.models import retromae_model, retromae_texts

STEPS = 14


class Interrupted(RuntimeError):
    pass


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(**kw) -> RetroMAEConfig:
    # 240 pieces / batch 32 = 8 steps per epoch: the resumed checkpoint (step 10) is in epoch 2
    base = dict(max_steps=STEPS, batch_size=32, lr=1e-2, max_length=48, seed=3, device="cpu")
    return RetroMAEConfig(**{**base, **kw})


def test_interrupted_retromae_resumes_to_the_uninterrupted_weights(tmp_path, retromae_tok_dir):
    tok = retromae_tok_dir
    texts = retromae_texts()
    reference = retromae_model(tok)
    ref_steps: list[dict] = []
    ref = train_retromae(reference, texts, _config(), on_progress=ref_steps.append)
    assert ref["steps"] == STEPS and ref["epochs"] > 1 and ref["resumed_from_step"] is None

    ckpt = tmp_path / "ckpt"
    stored: list[int] = []

    def stop_after_second_checkpoint(record: dict) -> None:
        if record["step"] == 12:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_retromae(
            retromae_model(tok),
            texts,
            _config(checkpoint_every=5),
            on_progress=stop_after_second_checkpoint,
            checkpoint_dir=ckpt,
            on_checkpoint=lambda folder, step: stored.append(step),
        )
    assert stored == [5, 10] and latest_checkpoint(ckpt).name == "step-00000010"

    resumed_model = retromae_model(tok)  # a fresh process would start from the same initial model
    steps: list[dict] = []
    summary = train_retromae(
        resumed_model, texts, _config(checkpoint_every=5), on_progress=steps.append, resume_from=ckpt
    )
    assert summary["resumed_from_step"] == 10 and summary["steps"] == STEPS
    assert [r["step"] for r in steps] == list(range(11, STEPS + 1))
    for got, want in zip(steps, ref_steps[10:], strict=True):
        assert got["loss"] == pytest.approx(want["loss"], abs=1e-6)
    for key in ("final_loss", "loss_first_10pct", "loss_last_10pct", "padding_ratio", "epochs"):
        assert summary[key] == pytest.approx(ref[key], abs=1e-6), key
    want = reference.state_dict()
    for name, value in resumed_model.state_dict().items():
        torch.testing.assert_close(value, want[name], rtol=0, atol=1e-6, msg=name)

    with pytest.raises(ValueError, match="another run"):  # other trajectory settings: refused
        train_retromae(retromae_model(tok), texts, _config(lr=2e-2), resume_from=ckpt)
