"""``python -m dyngate``: train, eval and profile gated networks."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import fields

import torch
import yaml

import dyngate
from dyngate.train import distributed
from dyngate.cli_model import add_parsers as add_model_parsers
from dyngate.errors import CheckpointError, DyngateError
from dyngate.options import add_options
from dyngate.train import (TrainConfig, Trainer, check_resume_config, config_from_dict, evaluate,
                           nonfinite_tensors)
from fsio import check_writable_dir, check_writable_file, exclusive_lock
from kernels.api import BACKENDS
from models.data import DATASETS, DataError, load_dataset


def _add_data_args(p: argparse.ArgumentParser, default_dataset: str | None = None) -> None:
    p.add_argument("--dataset", choices=DATASETS, default=default_dataset,
                   help="dataset (default: the one the checkpoint was trained on; one of: "
                        f"{', '.join(DATASETS)})")
    p.add_argument("--data-dir", help="dataset folder (default: the checkpoint's, else for "
                                      "Fashion-MNIST /usr/share/datasets/fashion-mnist)")
    p.add_argument("--limit", type=int, help="use only the first N test images (default: all; >= 1)")


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a dense, gated (CGNet) or CUCB model")
    p.add_argument("--config", help="YAML file of training options, keys as the flags below "
                                    "(default: none; flags override it)")
    p.add_argument("--resume", help="resume from a checkpoint written by this command "
                                    "(default: none: start fresh)")
    add_options(p, TrainConfig)


def _cfg_from_args(args) -> TrainConfig:
    opts: dict = {}
    if args.config:
        try:
            with open(args.config) as fh:
                opts = yaml.safe_load(fh) or {}
        except FileNotFoundError:
            raise DyngateError(f"--config: file {args.config} not found") from None
        except yaml.YAMLError as e:
            raise DyngateError(f"--config {args.config}: not valid YAML: {e}") from None
        if not isinstance(opts, dict):
            raise DyngateError(f"--config {args.config}: expected a mapping of training options")
        opts = {k.replace("-", "_"): v for k, v in opts.items()}
        try:
            config_from_dict(opts)
        except (ValueError, TypeError) as e:
            raise DyngateError(f"--config {args.config}: {e}") from None
    for f in fields(TrainConfig):
        v = getattr(args, f.name)
        if v is not None:
            opts[f.name] = v
    return config_from_dict(opts)  # validated: types (from YAML too), ranges, finiteness


def _load_eval_model(path: str, backend: str):
    model = dyngate.load(path)
    return dyngate.set_backend(model, backend)


def _eval_data(args, payload_cfg: dict):
    name = args.dataset or payload_cfg.get("dataset", "fashion-mnist")
    return load_dataset(name, "test", args.data_dir or payload_cfg.get("data_dir"), args.limit)


def cmd_train(args) -> int:
    cfg = _cfg_from_args(args)
    if args.resume:  # before any data loading: a changed option is refused at once
        state = dyngate.checkpoint.read(args.resume)["extra"].get("trainer")
        if state and "config" in state:   # (no trainer state: Trainer.resume says so)
            check_resume_config(state["config"], cfg, args.resume)
    main_rank = distributed.launched_rank() == 0   # under torchrun rank 0 alone writes
    if main_rank:
        check_writable_dir(cfg.out)
    # a second run into the same folder fails instead of mixing its files with this one's
    lock = exclusive_lock(cfg.out) if main_rank else contextlib.nullcontext()
    try:
        with lock:
            if cfg.cucb:
                from dyngate.train.cucb import CUCBTrainer  # noqa: PLC0415 (only CUCB runs need it)
                trainer: Trainer = CUCBTrainer(cfg)
            else:
                trainer = Trainer(cfg)
            if args.resume:
                trainer.resume(args.resume)
            history = trainer.fit()
            final = os.path.join(cfg.out, "final.pt")
            trainer.save(final)
    finally:
        distributed.shutdown()
    if main_rank:
        print(json.dumps(history[-1] if history else {}, indent=1))
        print(f"saved {final}")
    return 0


def _evaluate_checkpoint(args, progress: bool):
    """Load a checkpoint and measure accuracy and the sparsity profile on its test set."""
    if args.limit is not None and args.limit < 1:
        raise DyngateError(f"--limit must be >= 1, got {args.limit}")
    payload = dyngate.checkpoint.read(args.checkpoint)
    bad = nonfinite_tensors(payload["state_dict"])
    if bad:  # NaN weights close gates: the MAC reduction would look like a result
        raise CheckpointError(f"{args.checkpoint}: tensor(s) {', '.join(bad[:3])}"
                              f"{' ...' if len(bad) > 3 else ''} hold NaN/inf values; not evaluated")
    tcfg = payload["extra"].get("trainer", {}).get("config", {})
    model = _load_eval_model(args.checkpoint, args.backend)
    data = _eval_data(args, tcfg)
    acc, prof = evaluate(model, data, progress=progress)
    return acc, prof, data


def _time_checkpoint(args, data) -> dict:
    """Whole-network wall clock of the gated model against its own dense copy, both with their
    BatchNorms folded (dyngate.gating.timing), on the first ``--time-batches`` test batches of
    ``--time-batch-size`` images."""
    from dyngate.gating.timing import compare  # noqa: PLC0415 (only with --time)
    model = _load_eval_model(args.checkpoint, args.backend)
    x = data.tensors[0]
    bs = args.time_batch_size
    batches = [x[i:i + bs] for i in range(0, min(len(x), bs * args.time_batches), bs)]
    return compare(model, [b for b in batches if len(b) == bs] or batches[:1])


def cmd_eval(args) -> int:
    for flag in ("time_batch_size", "time_batches"):   # checked before the long evaluation
        if getattr(args, flag) < 1:
            raise DyngateError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.profile_out:
        check_writable_file(args.profile_out)
    acc, prof, data = _evaluate_checkpoint(args, progress=not args.json)
    payload = dyngate.checkpoint.read(args.checkpoint)
    dense_acc = payload["extra"].get("trainer", {}).get("dense_accuracy")
    timing = _time_checkpoint(args, data) if args.time else None
    if args.profile_out:
        prof.to_yaml(args.profile_out)
    if args.json:
        t = prof.totals
        print(json.dumps({"checkpoint": args.checkpoint, "accuracy": acc, "images": len(data),
                          "mac_reduction": t["mac_reduction"],
                          "gated_mac_reduction": t["gated_mac_reduction"],
                          "dense_macs": t["dense_macs"], "executed_macs": t["executed_macs"],
                          "dense_accuracy": dense_acc, **(timing or {}),
                          "layers": [{"name": l.name, "gated": l.gated, "density": l.density,
                                      "block_density": l.block_density, "tile": l.tile,
                                      "dense_macs": l.dense_macs, "executed_macs": l.executed_macs,
                                      "path": prof.execution.get(l.name)}
                                     for l in prof.layers]}, indent=1))
    else:
        print(prof.table())
        print(f"test accuracy {acc * 100:.2f}% on {len(data)} images; MAC reduction "
              f"{prof.totals['mac_reduction']:.2f}x whole network, "
              f"{prof.totals['gated_mac_reduction']:.2f}x over gated layers"
              + (f"; the dense model it was trained from: {dense_acc * 100:.2f}%" if dense_acc is not None else ""))
        if timing:
            print(f"wall clock, {timing['batches']} batches of {timing['batch_size']}, "
                  f"{timing['threads']} threads (median): dense {timing['dense_ms']:.1f} ms, gated "
                  f"{timing['gated_ms']:.1f} ms -> real speedup {timing['real_speedup']:.2f}x "
                  f"(both with BatchNorm folded: {timing['bn_folded']} in the gated model"
                  + (f", {len(timing['bn_kept'])} kept: {'; '.join(f'{k}: {v}' for k, v in timing['bn_kept'].items())}"
                     if timing["bn_kept"] else "") + ")")
        if args.profile_out:
            print(f"wrote sparsity profile {args.profile_out}")
    return 0


def cmd_profile(args) -> int:
    check_writable_file(args.out)  # before the evaluation, not after it
    _, prof, _ = _evaluate_checkpoint(args, progress=True)
    prof.to_yaml(args.out)
    print(prof.table())
    print(f"wrote {args.out}")
    return 0


def _export_parser(sub) -> None:
    from dyngate.deploy import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET  # noqa: PLC0415 (cheap, no onnx)
    p = sub.add_parser("export", help="export a dense or pruned checkpoint to ONNX, verified "
                                      "against torch with ONNX Runtime (needs .[onnx])")
    p.add_argument("checkpoint", help="checkpoint written by dyngate.save / train")
    p.add_argument("--out", required=True, help="ONNX file to write (replaced atomically)")
    p.add_argument("--input", metavar="CxHxW",
                   help="input size of one image, e.g. 1x28x28 (default: the checkpoint's "
                        "training dataset; else the model's input channels x 28x28 for 1 "
                        "channel, x 32x32 otherwise)")
    p.add_argument("--batch", type=int, default=1, help="batch size of the exported graph and "
                                                        "the verification input (default: 1; >= 1)")
    p.add_argument("--dynamic-batch", action="store_true",
                   help="make the batch dimension symbolic (default: fixed to --batch)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset (default: {DEFAULT_OPSET}; {MIN_OPSET}..{MAX_OPSET})")
    p.add_argument("--gates", choices=["refuse", "open"], default="refuse",
                   help="gated checkpoints: refuse (default; gates are data-dependent) or export "
                        "the gates-open dense equivalent")
    p.set_defaults(func=_cmd_export)


def _export_input_shape(args, model) -> tuple[int, int, int]:
    if args.input is not None:
        parts = args.input.lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise DyngateError(f"--input must be CxHxW with positive integers, e.g. 1x28x28; got {args.input!r}")
        return int(parts[0]), int(parts[1]), int(parts[2])
    from models.data import dataset_geometry  # noqa: PLC0415
    dataset = dyngate.checkpoint.read(args.checkpoint)["extra"].get("trainer", {}).get("config", {}).get("dataset")
    if dataset in DATASETS:
        c, size, _ = dataset_geometry(dataset)
        return c, size, size
    conv = next((m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, dyngate.GatedConv2d))), None)
    c = conv.in_channels if conv is not None else 1
    return (1, 28, 28) if c == 1 else (c, 32, 32)


def _cmd_export(args) -> int:
    if args.batch < 1:
        raise DyngateError(f"--batch must be >= 1, got {args.batch}")
    model = dyngate.load(args.checkpoint)
    shape = _export_input_shape(args, model)
    x = torch.randn((args.batch, *shape), generator=torch.Generator().manual_seed(0))
    r = dyngate.export(model, args.out, x, opset=args.opset, gates=args.gates,
                       dynamic_batch=args.dynamic_batch)
    print(f"wrote {r.path} (opset {r.opset}, input {'x'.join(map(str, r.input_shape))}"
          f"{', dynamic batch' if r.dynamic_batch else ''}{', gates open' if r.gates else ''}); "
          f"ONNX Runtime vs torch max abs error {r.max_abs_err:.2g} (tolerance {r.tolerance:.2g})")
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line naming the subcommand and option, exit code 2."""

    def error(self, message: str):
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The whole CLI: every subcommand and option (tests walk it to check the help)."""
    parser = _Parser(prog="python -m dyngate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    add_model_parsers(sub)
    _export_parser(sub)
    for name, help_ in (("eval", "accuracy, MAC reduction and the per-layer density table"),
                        ("profile", "write the measured SparsityProfile YAML")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("checkpoint", help="dyngate checkpoint (.pt) to evaluate")
        _add_data_args(p)
        p.add_argument("--backend", default="auto", choices=list(BACKENDS),
                       help="gated-layer kernels: auto picks per layer by measurement; reference "
                            "is plain torch (default: auto; one of: " + ", ".join(BACKENDS) + ")")
        if name == "eval":
            p.add_argument("--json", action="store_true", help="print one JSON object (default: a table)")
            p.add_argument("--profile-out", help="also write the sparsity profile YAML here (default: none)")
            p.add_argument("--time", action="store_true",
                           help="also time the whole network against its dense copy (same weights, "
                                "threads and batches, channels-last oneDNN, BatchNorm folded into the convs of "
                                "both): dense_ms, gated_ms, real_speedup (default: off)")
            p.add_argument("--time-batch-size", type=int, default=256,
                           help="images per timed batch (default: 256; >= 1)")
            p.add_argument("--time-batches", type=int, default=8,
                           help="timed batches, median reported (default: 8; >= 1)")
        else:
            p.add_argument("--out", required=True, help="profile YAML path to write (required)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:   # --help (0) or a usage error (2), already printed
        return int(e.code or 0)
    try:
        if hasattr(args, "func"):
            rc = args.func(args)
        else:
            rc = {"train": cmd_train, "eval": cmd_eval, "profile": cmd_profile}[args.command](args)
        sys.stdout.flush()  # a closed pipe surfaces here, inside the handler
        return rc
    except BrokenPipeError:
        # the reader left (``| head``): stop quietly; point stdout at /dev/null so the
        # interpreter's final flush does not print a traceback
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (DyngateError, DataError, ValueError, OSError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def _one_line(e: BaseException) -> str:
    """The error's message on one line (OSError: with the file it names)."""
    msg = str(e)
    if isinstance(e, OSError) and e.filename and str(e.filename) not in msg:
        msg = f"{e.filename}: {msg}"
    return " ".join(msg.split()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
