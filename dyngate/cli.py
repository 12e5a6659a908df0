"""``python -m dyngate``: train, eval and profile gated networks."""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields

import torch
import yaml

import dyngate
from dyngate.errors import DyngateError
from dyngate.train import TrainConfig, Trainer, config_from_dict, evaluate
from models.data import DATASETS, DataError, load_dataset


def _add_data_args(p: argparse.ArgumentParser, default_dataset: str | None = None) -> None:
    p.add_argument("--dataset", choices=DATASETS, default=default_dataset,
                   help="dataset (default: the one the checkpoint was trained on)")
    p.add_argument("--data-dir", help="dataset folder (Fashion-MNIST default: "
                                      "/usr/share/datasets/fashion-mnist)")
    p.add_argument("--limit", type=int, help="use only the first N test images")


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a dense, gated (CGNet) or CUCB model")
    p.add_argument("--config", help="YAML file of training options (flags override it)")
    p.add_argument("--resume", help="resume from a checkpoint written by this command")
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif isinstance(default, list):
            p.add_argument(flag, type=int, nargs="*", default=None)
        else:
            typ = type(default) if default is not None else (int if f.name.endswith("limit") or f.name == "threads" else str)
            p.add_argument(flag, type=typ, default=None)


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
    cfg = config_from_dict(opts)
    defaults = TrainConfig()
    for f in fields(TrainConfig):  # type-check values that came from YAML
        v, d = getattr(cfg, f.name), getattr(defaults, f.name)
        if d is not None and v is not None and not isinstance(v, type(d)) and not (
                isinstance(d, float) and isinstance(v, int)):
            raise DyngateError(f"training option '{f.name}' must be {type(d).__name__}, got {v!r}")
    return cfg


def _load_eval_model(path: str, backend: str):
    model = dyngate.load(path)
    return dyngate.set_backend(model, backend)


def _eval_data(args, payload_cfg: dict):
    name = args.dataset or payload_cfg.get("dataset", "fashion-mnist")
    return load_dataset(name, "test", args.data_dir or payload_cfg.get("data_dir"), args.limit)


def cmd_train(args) -> int:
    cfg = _cfg_from_args(args)
    if cfg.cucb:
        from dyngate.cucb import CUCBTrainer  # noqa: PLC0415 (only CUCB runs need it)
        trainer: Trainer = CUCBTrainer(cfg)
    else:
        trainer = Trainer(cfg)
    if args.resume:
        trainer.resume(args.resume)
    history = trainer.fit()
    final = os.path.join(cfg.out, "final.pt")
    trainer.save(final)
    print(json.dumps(history[-1] if history else {}, indent=1))
    print(f"saved {final}")
    return 0


def _evaluate_checkpoint(args, progress: bool):
    """Load a checkpoint and measure accuracy and the sparsity profile on its test set."""
    payload = dyngate.checkpoint.read(args.checkpoint)
    tcfg = payload["extra"].get("trainer", {}).get("config", {})
    model = _load_eval_model(args.checkpoint, args.backend)
    data = _eval_data(args, tcfg)
    acc, prof = evaluate(model, data, progress=progress)
    return acc, prof, data


def _time_checkpoint(args, data) -> dict:
    """Whole-network wall clock of the gated model against its own dense copy (dyngate.timing)
    on the first ``--time-batches`` test batches of ``--time-batch-size`` images."""
    from dyngate.timing import compare  # noqa: PLC0415 (only with --time)
    model = _load_eval_model(args.checkpoint, args.backend)
    x = data.tensors[0]
    bs = args.time_batch_size
    batches = [x[i:i + bs] for i in range(0, min(len(x), bs * args.time_batches), bs)]
    return compare(model, [b for b in batches if len(b) == bs] or batches[:1])


def cmd_eval(args) -> int:
    for flag in ("time_batch_size", "time_batches"):   # checked before the long evaluation
        if getattr(args, flag) < 1:
            raise DyngateError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
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
                  f"{timing['gated_ms']:.1f} ms -> real speedup {timing['real_speedup']:.2f}x")
        if args.profile_out:
            print(f"wrote sparsity profile {args.profile_out}")
    return 0


def cmd_profile(args) -> int:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dyngate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _export_parser(sub)
    for name, help_ in (("eval", "accuracy, MAC reduction and the per-layer density table"),
                        ("profile", "write the measured SparsityProfile YAML")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("checkpoint")
        _add_data_args(p)
        p.add_argument("--backend", default="auto", choices=["auto", "reference", "cpu", "triton"])
        if name == "eval":
            p.add_argument("--json", action="store_true", help="print one JSON object")
            p.add_argument("--profile-out", help="also write the sparsity profile YAML here")
            p.add_argument("--time", action="store_true",
                           help="also time the whole network against its dense copy (same weights, "
                                "threads and batches, channels-last oneDNN): dense_ms, gated_ms, "
                                "real_speedup")
            p.add_argument("--time-batch-size", type=int, default=256,
                           help="images per timed batch (default: 256; >= 1)")
            p.add_argument("--time-batches", type=int, default=8,
                           help="timed batches, median reported (default: 8; >= 1)")
        else:
            p.add_argument("--out", required=True, help="profile YAML path")
    args = parser.parse_args(argv)
    try:
        return {"train": cmd_train, "eval": cmd_eval, "profile": cmd_profile,
                "export": _cmd_export}[args.command](args)
    except (DyngateError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
