"""Qt-free rules of the panel's sampling widgets: what is enabled and offered, and the options sent to the engine.

The widget applies these to its combo boxes and spin boxes; keeping them here lets them be tested headless.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .checkpoint_info import ModelAttributes
from .engine import DEFAULT_SOLVER_STEPS, DEVICES, PRECISIONS, SAMPLERS
from .estimates import PATCH_PROFILES
from .models import ModelEntry

PERSISTED = ("modelName", "device", "sampler", "steps", "precision")  # kept across scenes and sessions (QSettings)
UNKNOWN_MAX_STEPS = 1000  # steps range for a checkpoint outside the model list (its T is read by the engine)
SAMPLER_TIPS = {
    "dpmpp2m": "DPM-Solver++ 2M: second-order few-step solver, the default (3 steps; more steps: closer to ddpm, slower).",
    "dpmpp3m": "DPM-Solver++ 3M: third-order few-step solver (the Lung-DDPM+ paper's choice, there with 50 steps).",
    "ddim": "DDIM: first-order few-step solver; usually needs more steps than DPM-Solver++ for the same quality.",
    "ddpm": "DDPM: the paper's ancestral sampler; runs all of the model's steps (hours on a CPU at 128³).",
}
AAS_VARIANTS = ("paper", "released")  # ddpm's AAS rule: the paper's Alg. 2, or the released code's
# What the combo boxes show for each choice (the parameter node stores the value; connectGui keeps the order).
CHOICE_LABELS = {
    "device": {"auto": "Automatic (CUDA GPU, else Apple GPU, else CPU)", "cuda": "CUDA GPU", "mps": "Apple GPU (MPS)",
               "cpu": "CPU"},
    "sampler": {"dpmpp2m": "DPM-Solver++ (2M)", "dpmpp3m": "DPM-Solver++ (3M)", "ddim": "DDIM",
                "ddpm": "DDPM (all of the model's steps)"},
    "precision": {"auto": "Automatic", "fp32": "float32", "bf16": "bfloat16", "fp16": "float16 (CUDA GPUs)"},
    "aasVariant": {"paper": "Paper (Alg. 2)", "released": "Released code"},
}
CHOICES = {"device": DEVICES, "sampler": SAMPLERS, "precision": PRECISIONS, "aasVariant": AAS_VARIANTS}  # combo order
PRECISION_TIPS = {
    "auto": "The engine's default: the fastest path measured to stay within its bf16 tolerance on the device it runs on "
            "(bfloat16 autocast on CPUs with native bf16, AVX-512 BF16 or AMX; float32 elsewhere, GPUs included). "
            "Each result records what ran; a server picks for its own device.",
    "fp32": "Full precision: the reference setting, reproducible bit for bit on the same CPU.",
    "bf16": "bfloat16 autocast of the network: faster on recent CPUs and GPUs, with small differences to fp32.",
    "fp16": "float16 autocast of the network: CUDA GPUs only.",
}


@dataclass(frozen=True)
class SamplingOptions:
    """What the engine gets from the panel's sampling widgets (None: the engine's own default)."""

    sampler: str
    steps: int | None
    aas_variant: str
    precision: str
    patch_spacing_mm: float | None


@dataclass(frozen=True)
class WidgetStates:
    """Which sampling widgets are enabled, and the steps range, for a sampler and model."""

    steps_enabled: bool
    max_steps: int
    aas_variant_enabled: bool
    patch_spacing_enabled: bool


@dataclass(frozen=True)
class AttributeStates:
    """Which nodule-attribute controls are enabled for a model, the guidance default, and what the panel says."""

    enabled: dict[str, bool]  # the model's own characteristics and the shape ones (Add nodule paints them)
    guidance_enabled: bool
    guidance_default: float | None
    message: str


def spoken_list(names: Sequence[str]) -> str:
    """Names as a sentence says them: 'a', 'a and b', 'a, b and c'."""
    if len(names) < 2:
        return "".join(names)
    return f"{', '.join(names[:-1])} and {names[-1]}"


def shaping_clause(shapes: Sequence[str]) -> str:
    """'lobulation shapes the outline Add nodule paints' (plural verb for several)."""
    return f"{spoken_list(shapes)} {'shapes' if len(shapes) == 1 else 'shape'} the outline Add nodule paints"


def attribute_states(model: ModelAttributes | None, fields: Sequence[str], shape_fields: Sequence[str],
                     model_title: str, unknown_reason: str = "") -> AttributeStates:
    """Controls enabled for the model's characteristics and, for any model, the shape ones (None: file not readable).

    shape_fields: the characteristics Add nodule paints into the outline (the engine's SHAPE_FIELDS), whatever the model.
    """
    if model is None:
        return AttributeStates({f: False for f in fields}, False, None,
                               f"Nodule attributes: {unknown_reason or 'the model file cannot be read'}.")
    shapes = [f for f in shape_fields if f in fields]
    if not model.attributes:
        return AttributeStates({f: f in shapes for f in fields}, False, None,
                               f"{model_title} takes no nodule attributes: its nodules follow the layout only; "
                               f"{shaping_clause(shapes)}.")
    enabled = {f: f in model.attributes or f in shapes for f in fields}
    painted = [f for f in shapes if f not in model.attributes]
    others = [f for f in fields if not enabled[f]]
    message = f"{model_title} takes {', '.join(model.attributes)}" + (
        f"; {shaping_clause(painted)}" if painted else "") + (
        f"; it does not know {', '.join(others)}" if others else "")
    return AttributeStates(enabled, True, model.guidance_scale, message + ".")


def default_steps(model: ModelAttributes | None) -> int:
    """The solver steps the panel starts from: the model file's own default, else the engine's (DEFAULT_SOLVER_STEPS)."""
    return model.solver_steps if model is not None and model.solver_steps else DEFAULT_SOLVER_STEPS


def sampling_options(sampler: str, steps: int, aas_variant: str, precision: str,
                     patch_spacing_mm: float) -> SamplingOptions:
    """The panel's values as engine options: steps only for solvers, the AAS variant only for ddpm, 0 mm = model's own."""
    ddpm = sampler == "ddpm"
    return SamplingOptions(sampler, None if ddpm else int(steps), aas_variant if ddpm else "paper", precision,
                           float(patch_spacing_mm) if patch_spacing_mm > 0 else None)


def variant_seeds(seed: int, variants: int) -> list[int]:
    """One seed per variant, as the panel's Seed and Variants ask: seed, seed + 1, ..."""
    return [int(seed) + n for n in range(int(variants))]


def add_nodule_attributes(stored: str, states: AttributeStates) -> dict[str, float]:
    """What Add nodule sends as --nodule (and tags): the known stored values (JSON; 0: unknown) of every enabled control."""
    values = json.loads(stored or "{}")
    return {field: value for field, value in values.items() if states.enabled.get(field) and value}


def synthesis_attributes(tagged: Sequence[Mapping[str, float]], model_attributes: Sequence[str]
                         ) -> tuple[list[dict[str, float]], list[str]]:
    """What Synthesize sends per nodule: only the tags the model takes; and the tagged characteristics it leaves out.

    A model is conditioned on its own characteristics only (the engine refuses others in --nodule and leaves them
    unused in a sidecar); a shape tag has done its work in the outline Add nodule painted.
    """
    sent = [{f: v for f, v in values.items() if f in model_attributes} for values in tagged]
    left_out = list(dict.fromkeys(f for values in tagged for f in values if f not in model_attributes))
    return sent, left_out


def left_out_message(left_out: Sequence[str], shape_fields: Sequence[str], model_name: str) -> str:
    """The log line for tags Synthesize leaves out, saying which of them shaped the outline Add nodule paints."""
    shapes = [f for f in left_out if f in shape_fields]
    pronoun = "it" if len(left_out) == 1 else "them"
    return f"{model_name} does not take {spoken_list(left_out)}; Synthesize leaves {pronoun} out" + (
        f" ({shaping_clause(shapes)})" if shapes else "")


def prompt_values(parsed: Mapping[str, float], states: AttributeStates) -> tuple[str, list[str]]:
    """A parsed prompt as the enabled combos' stored values (JSON), and the parsed fields no enabled control takes."""
    ignored = [field for field in parsed if not states.enabled.get(field)]
    return json.dumps({f: int(round(v)) for f, v in parsed.items() if states.enabled.get(f)}), ignored


def widget_states(sampler: str, entry: ModelEntry | None) -> WidgetStates:
    """Steps (1..T) for the solvers only, the AAS variant for ddpm only, patch spacing for patch models (or unknown)."""
    solver = sampler != "ddpm"
    return WidgetStates(steps_enabled=solver, max_steps=entry.timesteps if entry is not None else UNKNOWN_MAX_STEPS,
                        aas_variant_enabled=not solver,
                        patch_spacing_enabled=entry is None or entry.profile in PATCH_PROFILES)


def offered_precisions(cuda_gpu: bool) -> tuple[str, ...]:
    """The precisions to offer: fp16 only when a CUDA GPU was detected."""
    return PRECISIONS if cuda_gpu else tuple(p for p in PRECISIONS if p != "fp16")


def choice_labels(auto_picks: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """CHOICE_LABELS with the Automatic precision saying what it runs here, e.g. 'Automatic (bfloat16 on this CPU)'.

    auto_picks: where -> precision, from the engine's ``lungddpm.runtime.precision.auto_precision`` (torch-free).
    """
    names = CHOICE_LABELS["precision"]
    picked = ", ".join(f"{names[precision]} on {where}" for where, precision in auto_picks.items())
    return {**CHOICE_LABELS, "precision": {**names, "auto": f"{names['auto']} ({picked})"}}


def precision_problem(precision: str, device: str, cuda_gpu: bool) -> str:
    """Why a precision cannot run on the chosen device, with the fix; empty when it can."""
    if precision == "fp16" and (device not in ("auto", "cuda") or not cuda_gpu):
        return ("fp16 runs only on a CUDA GPU: choose device 'auto' or 'cuda' on a computer with one, "
                "or precision bf16 or fp32")
    return ""



def stored_settings(values: Mapping[str, object]) -> dict[str, str]:
    """The persisted parameters as the text QSettings stores."""
    return {key: str(values[key]) for key in PERSISTED if key in values}


def restored_settings(stored: Mapping[str, object], offered: Mapping[str, Sequence[str]]) -> dict[str, object]:
    """The stored parameters that are still valid (a choice still offered, steps a whole number from 1), typed.

    A value QSettings returns as None (never stored) or that no longer fits (a model removed from the list,
    fp16 on a computer without a CUDA GPU) is left out, so the default stays.
    """
    restored: dict[str, object] = {}
    for key in PERSISTED:
        value = stored.get(key)
        if value is None:
            continue
        if key == "steps":
            text = str(value)
            if text.isdigit() and int(text) >= 1:
                restored[key] = int(text)
        elif str(value) in offered.get(key, ()):
            restored[key] = str(value)
    return restored
