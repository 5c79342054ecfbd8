"""``diffcache metrics REF TEST``: PSNR, SSIM, LPIPS and temporal flickering of videos or images a user already
has, under named evaluation protocols (:mod:`diffcache.quality`)."""

from __future__ import annotations

import json
import math

from ._common import FORMATTER

EXAMPLES = """examples:
  diffcache metrics uncached.mp4 cached.mp4                      # one pair, the default protocol
  diffcache metrics out/ref/ out/teacache/ --protocol videosys    # folders, files matched by name
  diffcache metrics ref.png test.png --protocol "diffcache;skimage;torchmetrics"
  diffcache metrics ref/ test/ --json scores.json --csv scores.csv
  diffcache metrics ref/ test/ --clip-model ~/models/clip-vit-base-patch32 --prompts prompts.tsv
  diffcache metrics ref/ test/ --fvd-detector ~/models/i3d_torchscript.pt     # FVD over the folder's pairs
  diffcache metrics ref/ test/ --vbench subject_consistency,motion_smoothness  # an installed VBench, offline
  diffcache metrics --list-protocols

protocols (--protocol NAME, several separated by ';', or fields such as 'psnr=frame-mean,ssim=torchmetrics'):
  diffcache      one PSNR over the video, Gaussian SSIM (scikit-image gaussian_weights=True)   [default]
  videosys       PSNR per frame averaged (100 dB if equal), Gaussian SSIM, LPIPS spatial=True
                 (VideoSys / PAB / TeaCache evaluation scripts)
  skimage        scikit-image defaults per frame: PSNR, SSIM with a 7x7 uniform window
  torchmetrics   torchmetrics defaults: PSNR over the video, SSIM on reflect-padded frames

Frames are read from the files as 8-bit values (videos with imageio-ffmpeg). Temporal flickering is VBench's
(arXiv 2311.17982): (255 - mean |frame difference|) / 255, higher is steadier; 'flicker added' is the
reference's minus the test's. LPIPS runs offline when its weights are installed, and is skipped with the
reason otherwise. CLIP and FVD run only with weights on disk (--clip-model, --fvd-detector, or the
environment variables DIFFCACHE_CLIP_MODEL and DIFFCACHE_FVD_DETECTOR); nothing is downloaded."""


def add_parser(subparsers) -> None:
    m = subparsers.add_parser("metrics", help="score videos or images against references (PSNR, SSIM, LPIPS, "
                                              "flicker) under named protocols",
                              description="Score TEST against REF: two videos, two images, or two folders whose "
                                          "files are matched by name.",
                              epilog=EXAMPLES, formatter_class=FORMATTER)
    m.add_argument("reference", metavar="REF", nargs="?", help="the reference video, image or folder")
    m.add_argument("test", metavar="TEST", nargs="?", help="the video, image or folder scored against REF")
    m.add_argument("--protocol", default="diffcache",
                   help="protocol name(s) separated by ';' or FIELD=VALUE,… (default: diffcache)")
    m.add_argument("--list-protocols", action="store_true", help="print the protocols and what each follows")
    m.add_argument("--json", default=None, help="also write every row, the means and the notes to this JSON file")
    m.add_argument("--csv", default=None, help="also write one row per pair and protocol to this CSV file")
    m.add_argument("--force", action="store_true", help="overwrite --json / --csv if they exist")
    m.add_argument("--no-lpips", action="store_true", help="leave LPIPS out (it is the slowest metric)")
    m.add_argument("--prompt", default=None, help="the prompt of every TEST video, for the CLIP text score")
    m.add_argument("--prompts", default=None,
                   help="prompts by video name: a JSON object or lines NAME<TAB>PROMPT (for the CLIP text score)")
    m.add_argument("--clip-model", default=None,
                   help="a CLIP model folder on disk (safetensors) for CLIP scores (default: $DIFFCACHE_CLIP_MODEL)")
    m.add_argument("--fvd-detector", default=None,
                   help="an I3D TorchScript detector file for FVD (default: $DIFFCACHE_FVD_DETECTOR)")
    m.add_argument("--vbench", default=None, metavar="DIMENSIONS",
                   help="VBench dimensions separated by commas (e.g. subject_consistency,motion_smoothness), scored "
                        "by an installed vbench package whose checkpoints are in $VBENCH_CACHE_DIR")


def _fmt(value, digits: int) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    return f"{value:.{digits}f}"


#: (key, title, digits) of the terminal table
TABLE = (("psnr", "PSNR (dB)", 2), ("ssim", "SSIM", 4), ("lpips", "LPIPS", 4), ("rel_l1", "rel. L1", 4),
         ("flicker", "flicker", 4), ("flicker_added", "flicker added", 4), ("clip_text", "CLIP text", 4),
         ("clip_frame", "CLIP frame", 4))


def table(result, protocol: str) -> str:
    """The rows of one protocol and their mean as an aligned text table (columns with no value left out)."""
    rows = [r for r in result.rows if r["protocol"] == protocol]
    vbench = [(key, key.removeprefix("vbench_").replace("_reference", " (ref)"), 4) for key in (rows[0] if rows else {})
              if key.startswith("vbench_")]
    columns = [c for c in (*TABLE, *vbench) if any(r.get(c[0]) is not None for r in rows)]
    lines = [["video"] + [title for _, title, _ in columns]]
    for r in rows:
        lines.append([r["name"]] + [_fmt(r.get(key), d) for key, _, d in columns])
    if len(rows) > 1:
        mean = result.means[protocol]
        lines.append([f"mean of {len(rows)}"] + [_fmt(mean.get(key), d) for key, _, d in columns])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
            for line in lines]
    text.insert(1, "-" * len(text[0]))
    return "\n".join(text)


def csv_text(result) -> str:
    import csv
    import io

    from ..quality.compare import COLUMNS

    vbench = [key for key in (result.rows[0] if result.rows else {}) if key.startswith("vbench_")]
    keys = ["name", "protocol", "frames", "num_frames", "height", "width", *COLUMNS, *vbench, "reference", "test"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    for row in result.rows:
        writer.writerow({k: ("inf" if isinstance(row.get(k), float) and math.isinf(row[k]) else row.get(k))
                         for k in keys})
    return buffer.getvalue()


def run(args) -> int:
    if not args.list_protocols and (not args.reference or not args.test):  # before any import: answers at once
        raise ValueError("give REF and TEST (two videos, two images or two folders), or --list-protocols.")
    if args.prompt and args.prompts:
        raise ValueError("give --prompt (one prompt for every video) or --prompts FILE, not both.")
    if args.prompts is not None and not args.prompts.strip():
        raise ValueError(f"--prompts {args.prompts!r}: an empty name; give a JSON object of video name → prompt, or "
                         "a text file of lines NAME<TAB>PROMPT.")
    from ..quality.protocols import PROTOCOLS, parse_protocols

    if args.list_protocols:
        for protocol in PROTOCOLS.values():
            print(f"{protocol.name}: frames={protocol.frames} psnr={protocol.psnr} ssim={protocol.ssim} "
                  f"lpips={protocol.lpips}\n    {protocol.follows}")
        return 0
    protocols = parse_protocols(args.protocol)  # a bad name fails before any file is read
    from ..files import write_text
    from ..validation import check_output

    for option, path in (("--json", args.json), ("--csv", args.csv)):
        if path is not None:  # a folder, an existing file without --force, an unwritable place: before any reading
            check_output(path, args.force, option=option)
    from ..quality.compare import compare, read_prompts

    prompts = args.prompt
    if args.prompts is not None:
        try:
            prompts = read_prompts(args.prompts)
        except (OSError, UnicodeDecodeError, ValueError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else (
                "not a text file" if isinstance(error, UnicodeDecodeError) else str(error))
            raise ValueError(f"--prompts {args.prompts}: {reason}; give a JSON object of video name → prompt, or "
                             "a text file of lines NAME<TAB>PROMPT.") from None
    result = compare(args.reference, args.test, protocols, lpips=not args.no_lpips, prompts=prompts,
                     clip_model=args.clip_model, fvd_detector=args.fvd_detector,
                     vbench=[d.strip() for d in args.vbench.split(",") if d.strip()] if args.vbench else None)
    for protocol in protocols:
        print(f"protocol {protocol.name} (psnr={protocol.psnr}, ssim={protocol.ssim}, lpips={protocol.lpips}; "
              "frames decoded from the files)")
        print(table(result, protocol.name))
        print()
    for key, value in result.set_level.items():
        print(f"{key.upper()}: {_fmt(value, 2)} over {len({r['name'] for r in result.rows})} pairs")
    for note in result.notes:
        print(f"note: {note}")
    if args.json:
        from ..bench.store import _encode

        write_text(args.json, json.dumps(_encode(result.as_json()), indent=1), force=args.force)
        print(f"written: {args.json}")
    if args.csv:
        write_text(args.csv, csv_text(result), force=args.force)
        print(f"written: {args.csv}")
    return 0
