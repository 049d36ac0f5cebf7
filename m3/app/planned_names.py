"""Every ref a run of a profile makes, known before it starts, so the preflight can check them.

The store refuses a name over 128 characters when it commits (``m3.store.names``). A profile name
that fits could still fail there hours in: at ``source/<name>.<source>`` once Prefect had started,
or at round 2's ``embeddings/<name>-r2-passages`` after round 1 had mined and trained. The names
below are the ones the stages make; each line says where.
"""

from __future__ import annotations

from m3.app.profile import Profile


def planned_refs(profile: Profile) -> list[str]:
    """``KIND/NAME`` of every artifact a full run of ``profile`` makes (and names with a ref)."""
    from tasks.mining.embed import PASSAGES, QUERIES
    from tasks.mining.stage import round_name

    name = profile.name
    refs = [f"source/{name}.{s.name}" for s in profile.sources]  # tasks.ingest.stage.register_source
    refs += [f"corpus/{name}", f"queries/{name}"]
    # tasks.training.stage.build_checkpoint: the start, RetroMAE, contrastive pretraining
    refs.append(f"checkpoint/{name}-init" if profile.model.init else f"tokenizer/{name}")
    if profile.retromae:
        refs.append(f"checkpoint/{name}-retromae")
    refs.append(f"checkpoint/{name}")
    if profile.pretrain is not None:
        refs += [f"pairs/{name}", f"train-state/{name}-pretrain"]  # tasks.training.run._state_name
        if profile.pairs.translation:
            refs.append(f"source/{name}.bitext-pairs")  # tasks.training.stage.register_bitext
    # tasks.mining.stage / tasks.training.stage.build_model: one train-set and model per ANCE round
    mine, rounds = profile.mine, profile.mine.rounds
    for k in range(1, rounds + 1):
        rn = round_name(name, k, rounds)
        refs += [f"train-set/{rn}", f"model/{rn}", f"train-state/{rn}-finetune"]
        if mine.teacher != "bm25" or k > 1:  # tasks.mining.embed.commit_embeddings
            refs += [f"embeddings/{rn}-{PASSAGES}", f"embeddings/{rn}-{QUERIES}"]
    if rounds > 1:  # flows.pipeline._ance_rounds: the last round's under the profile's name
        refs += [f"train-set/{name}", f"model/{name}"]
    # tasks.evaluate.stage: the report, the champion's on the same data when there is one to beat
    refs += [f"report/{name}", f"report/{name}-champion", "model/champion"]
    if profile.evaluate.compare_rounds:  # tasks.evaluate.stage: one report per step of the chain
        steps = bool(profile.model.init) + bool(profile.retromae) + (profile.pretrain is not None) + rounds
        kept = 1 if profile.evaluate.compare_rounds == "start" else steps - 1
        refs += [f"report/{name}-round{k}" for k in range(min(kept, steps - 1))]
    return list(dict.fromkeys(refs))
