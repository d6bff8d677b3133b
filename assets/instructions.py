"""Instruction stage (group `instructions`): the paraphrase bank (RP) and the held-out phrasings."""

from typing import Optional

import dagster as dg
from pydantic import Field

from pipelines.config import RunFloat
from pipelines.resources import InstructCVSettings


class ParaphraseBankConfig(dg.Config):
    """How the RP paraphrases are made: an LLM through transformers, or the bundled reviewed bank."""

    model_id: str = Field(
        default="humarin/chatgpt_paraphraser_on_T5_base",
        description="Hugging Face id or local folder of a seq2seq or causal paraphrase model.",
    )
    allow_network: bool = Field(default=False, description="Let transformers download the model (otherwise local files/cache only).")
    allow_bundled: Optional[bool] = Field(
        default=None,
        description="When the model is not available, use the bundled hand-reviewed bank (rows labelled "
        "source=bundled). Unset = allowed in the mini profile only.",
    )
    num_return_sequences: int = Field(default=10, ge=1, description="Candidates per generation round.")
    num_rounds: int = Field(default=5, ge=1, description="Sampling rounds per template (each seeded).")
    min_similarity: RunFloat = Field(default=0.6, description="Semantic similarity threshold of the quality filter.")
    seed: Optional[int] = Field(default=None, description="Generation seed; unset = settings.seed.")


def _instructions_dir(settings: InstructCVSettings):
    return settings.profile_dir / "instructions"


@dg.asset(
    group_name="instructions",
    kinds={"transformers", "parquet"},
    description="The RP paraphrase bank: every candidate paraphrase of each task template with its "
    "filter scores (placeholders, length, semantic similarity, duplicates, held-out clashes), source "
    "and generation parameters. Accepted rows feed the RP manifest.",
)
def paraphrase_bank(context: dg.AssetExecutionContext, config: ParaphraseBankConfig, settings: InstructCVSettings) -> dg.MaterializeResult:
    from instructcv_core.construction.manifest import write_table_frame
    from instructcv_core.instructions.paraphrase import ParaphraseConfig, build_bank

    params = ParaphraseConfig(
        model_id=config.model_id, allow_network=config.allow_network,
        num_return_sequences=config.num_return_sequences, num_rounds=config.num_rounds,
        min_similarity=config.min_similarity, seed=settings.seed if config.seed is None else config.seed,
    )
    allow_bundled = settings.profile == "mini" if config.allow_bundled is None else config.allow_bundled
    bank, summary = build_bank(params, allow_bundled=allow_bundled)
    path = _instructions_dir(settings) / "paraphrase_bank.parquet"
    write_table_frame(bank, path)
    accepted = bank[bank["accepted"]]
    context.log.info(f"paraphrase bank: {len(accepted)} accepted of {len(bank)} candidates ({summary})")
    per_task = bank.groupby(["task", "source", "accepted"]).size().rename("rows").reset_index()
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "accepted": len(accepted),
            "candidates": len(bank),
            "sources": ", ".join(sorted(set(bank["source"]))),
            "model_id": config.model_id,
            "per_task": dg.MetadataValue.md(per_task.to_markdown(index=False)),
            "rejection_reasons": dg.MetadataValue.json(summary.get("reasons", {})),
            "examples": dg.MetadataValue.md(
                accepted.groupby("task").head(3)[["task", "paraphrase", "similarity"]].to_markdown(index=False)
            ),
        }
    )


@dg.asset_check(asset=paraphrase_bank, blocking=True, description="Enough accepted paraphrases per task, none of them held out.")
def paraphrase_bank_variety(settings: InstructCVSettings) -> dg.AssetCheckResult:
    import pandas as pd

    from instructcv_core.instructions.templates import HELDOUT, normalise

    bank = pd.read_parquet(_instructions_dir(settings) / "paraphrase_bank.parquet")
    accepted = bank[bank["accepted"]]
    minimum = {"segmentation": 50, "detection": 50, "depth": 20, "classification": 10}
    counts = {task: int((accepted["task"] == task).sum()) for task in minimum}
    heldout = {normalise(h.text) for h in HELDOUT}
    clashes = sorted(set(accepted["paraphrase"].map(normalise)) & heldout)
    short = {t: c for t, c in counts.items() if c < minimum[t]}
    return dg.AssetCheckResult(
        passed=not short and not clashes,
        metadata={"accepted_per_task": dg.MetadataValue.json(counts), "below_minimum": dg.MetadataValue.json(short),
                  "heldout_clashes": dg.MetadataValue.json(clashes)},
    )


@dg.asset(
    group_name="instructions",
    kinds={"parquet"},
    description="Held-out phrasings never used in training (the paper's Table 3 instructions plus our own), "
    "for the prompt-robustness evaluation.",
)
def heldout_instructions(settings: InstructCVSettings) -> dg.MaterializeResult:
    import pandas as pd

    from instructcv_core.instructions.templates import HELDOUT
    from instructcv_core.construction.manifest import write_table_frame

    frame = pd.DataFrame([{"task": h.task, "text": h.text, "source": h.source, "is_fp_template": h.is_fp_template} for h in HELDOUT])
    path = _instructions_dir(settings) / "heldout.parquet"
    write_table_frame(frame, path)
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "phrasings": len(frame),
            "table": dg.MetadataValue.md(frame.to_markdown(index=False)),
        }
    )
