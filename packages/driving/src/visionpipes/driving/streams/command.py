"""The `vp-driving stream` verb: its arguments and its handler (the CLI module only wires it in).

Light at import (argparse only), so `vp-driving --help` stays fast; never imports training code.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from visionpipes.core.errors import UserError

EPILOG = """\
sources: a video file ends ("ended"); a camera index (0), /dev/videoN, an RTSP/HTTP URL or a
GStreamer pipeline (a string with '!') is live: when it drops it is reconnected for ever (or for
--reconnect-max seconds) with a wait that doubles from --backoff up to --reconnect-cap.
model family: --model-family auto (default) runs the multi-task perception.onnx (detections, lanes
and drivable area from one graph) when the --deploy folder holds it, else the detector and lane model;
two_model or multitask chooses. With the multi-task model each JSON frame also holds the drivable
area as BDD100K `area/drivable` / `area/alternative` polygons.
outputs in --out: camK.jsonl (labels as they come), camK.json (BDD100K det JSON, at the end),
camK.mp4 (a new segment camK-1.mp4, ... when the frame size changes) and status.json.
SIGINT (Ctrl-C) or SIGTERM ends the run cleanly: outputs finalised, exit code 0; a second signal
aborts (the JSON Lines stay). Bad arguments, a missing source file or model: exit code 2.
"""


def add_stream_parser(verbs: Any) -> argparse.ArgumentParser:
    """Add the `stream` verb to the `vp-driving` sub-parsers; its handler is `cmd_stream`."""
    p = verbs.add_parser(
        "stream",
        help="run the exported models on several camera streams at once",
        description="Run the exported detector (and lane model) on several camera streams at once.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sources", nargs="+", help="video files, camera indices, /dev/videoN, RTSP/HTTP URLs, GStreamer pipelines")
    p.add_argument("--out", required=True, help="folder for camK.jsonl, camK.json, camK.mp4 and status.json")
    p.add_argument(
        "--deploy",
        help="a deploy folder of `vp-driving deploy` (its model.json: perception.onnx, or detector_int8.onnx "
        "preferred and lanes.onnx)",
    )
    p.add_argument(
        "--model-family",
        default="auto",
        choices=["two_model", "multitask", "auto"],
        help="two_model: detector + lane model; multitask: perception.onnx; auto (default): multitask when "
        "the deploy folder (or --perception) gives one",
    )
    p.add_argument("--det", help="exported detector (.onnx)")
    p.add_argument("--lanes", help="exported lane model (.onnx)")
    p.add_argument("--perception", help="exported multi-task model (perception.onnx)")
    p.add_argument("--no-lanes", action="store_true", help="run the detector only")
    p.add_argument("--lanes-every", type=int, default=1, help="run the lane model every n-th tick (default 1)")
    p.add_argument("--conf", type=float, default=0.25, help="detection score threshold (default 0.25)")
    p.add_argument("--tracker", default="bytetrack", choices=["bytetrack", "botsort"], help="tracker (default bytetrack)")
    p.add_argument("--seconds", type=float, help="stop after this many seconds")
    p.add_argument("--max-frames", type=int, help="stop after this many frames per camera")
    p.add_argument("--no-realtime", action="store_true", help="read video files as fast as possible")
    p.add_argument("--loop", action="store_true", help="replay video files when they end")
    p.add_argument("--live", action="store_true", help="treat every source as live (a file that vanishes is reconnected)")
    p.add_argument(
        "--reconnect-max", type=float, metavar="SECONDS",
        help="give a live camera up after this long without frames (default: reconnect for ever)",
    )
    p.add_argument("--backoff", type=float, default=0.5, metavar="SECONDS", help="first reconnection wait (default 0.5)")
    p.add_argument(
        "--reconnect-cap", type=float, default=30.0, metavar="SECONDS", help="longest reconnection wait (default 30)"
    )
    p.add_argument("--status-every", type=float, default=1.0, metavar="SECONDS", help="status line period (default 1)")
    p.add_argument("--threads", type=int, help="onnxruntime threads per model (default: all cores)")
    p.add_argument("--no-video", action="store_true", help="write no annotated videos")
    p.set_defaults(func=cmd_stream)
    return p


def cmd_stream(args: argparse.Namespace) -> None:
    """Run `vp-driving stream` and print its report as JSON.

    Raises:
        UserError: for a missing detector, a bad source or model, or a bad option value.
    """
    from visionpipes.driving.streams.run import StreamConfig, check_sources, run_streams

    for name in ("backoff", "reconnect_cap", "status_every"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be a positive number of seconds.")
    check_sources(args.sources, live=args.live or None)  # before reading any model
    from visionpipes.driving.deployment import resolve_models

    family, det, lanes, perception = resolve_models(
        args.deploy, args.model_family, det=args.det, lanes=args.lanes, perception=args.perception
    )
    config = StreamConfig(
        conf=args.conf,
        tracker=args.tracker,
        lanes_every=0 if args.no_lanes else args.lanes_every,
        max_seconds=args.seconds,
        max_frames=args.max_frames,
        realtime=not args.no_realtime,
        loop=args.loop,
        live=True if args.live else None,
        reconnect_max_s=args.reconnect_max,
        backoff_s=args.backoff,
        backoff_cap_s=args.reconnect_cap,
        status_every_s=args.status_every,
        threads=args.threads,
        write_video=not args.no_video,
    )
    if family == "multitask":
        report = run_streams(args.sources, args.out, perception_path=perception, config=config)
    else:
        report = run_streams(args.sources, args.out, detector_path=det, lanes_path=lanes, config=config)
    print(json.dumps(report.as_dict(), indent=2))

