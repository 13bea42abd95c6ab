"""Real speech of many speakers from a Debian package: the spoken dialogue of the game Fish Fillets, recorded by
actors in Czech (`fillets-ng-data-cs`, 101 minutes) and Dutch (`fillets-ng-data-nl`, 91 minutes; GPL), written as a
folder of speakers for `data.recordings=DIR` (or `data.train=folder data.train_path=DIR`).

    sudo apt-get install fillets-ng-data-cs fillets-ng-data-nl
    python -m apps.speech.fillets DIR          # DIR/<language>-<speaker>/<level>-<line>.flac, 8 kHz
    python -m apps.speech.fillets DIR --codec opus --sample-rate 8000      # a fifth of the size, lossy

A line is `sound/<level>/<language>/<id>.ogg`, and the level's script `script/<level>/dialogs_<language>.lua` names
the font its subtitle is drawn in, `dialogId("<id>", "<font>", ...)`, which tells who speaks it: `font_big` is the big
fish and `font_small` the small one, each one actor per language through every level (30-37 minutes each); any other
font is a character of that level (a statue, a parrot, five vikings; Czech only), taken as a speaker of its own. Left
out, and listed by the command: lines the script does not name (68 Czech ones, one Dutch), lines of both fish at once
(`font_both`), empty files (two Dutch ones), and speakers with fewer than `min_lines` lines.
"""
from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

import soundfile

from apps.speech.audio import load_mono, trim_silence

ROOT = Path("/usr/share/games/fillets-ng")
LANGUAGES = ("cs", "nl")
FISH = {"font_big": "v", "font_small": "m"}  # velká, malá: the big and the small fish
TOGETHER = "font_both"
FIX = "sudo apt-get install fillets-ng-data-cs fillets-ng-data-nl (Debian, Ubuntu)"
SUFFIX = {"flac": ".flac", "opus": ".ogg"}
DIALOG = re.compile(r'dialogId\(\s*"([^"]+)"\s*,\s*"([^"]+)"')


def fonts(root: Path, level: str, language: str) -> dict[str, str]:
    """{line id: subtitle font} of a level's dialogue script in `language` (empty if it has none)."""
    script = root / "script" / level / f"dialogs_{language}.lua"
    return dict(DIALOG.findall(script.read_text(errors="replace"))) if script.is_file() else {}


def dialogue(root: Path = ROOT, languages: tuple[str, ...] = LANGUAGES) -> tuple[dict[str, list[Path]], list[str]]:
    """({"<language>-<speaker>": its lines, sorted}, the lines left out and why); speakers are `cs-v`, `nl-m`, `cs-viking2-viking4`.
    FileNotFoundError naming the packages if there is no dialogue."""
    speakers: dict[str, list[Path]] = defaultdict(list)
    left_out: list[str] = []
    for language in languages:
        for level_dir in sorted(p for p in (root / "sound").glob("*") if (p / language).is_dir()):
            level, named = level_dir.name, fonts(root, level_dir.name, language)
            for path in sorted((level_dir / language).glob("*.ogg")):
                font = named.get(path.stem)
                if font is None or font == TOGETHER:
                    left_out.append(f"{path} ({'both fish at once' if font else 'no speaker in the script'})")
                elif soundfile.info(path).frames == 0:
                    left_out.append(f"{path} (empty)")
                else:
                    who = FISH.get(font) or f"{level}-{font.removeprefix('font_')}"
                    speakers[f"{language}-{who}"].append(path)
    if not speakers:
        raise FileNotFoundError(f"no Fish Fillets dialogue in {'/'.join(languages)} under {root}; install it: {FIX}")
    return dict(sorted(speakers.items())), left_out


def write_speakers(
    out: Path, root: Path = ROOT, languages: tuple[str, ...] = LANGUAGES, sample_rate: int = 8000, codec: str = "flac",
    min_lines: int = 3,
) -> tuple[dict[str, float], list[str]]:  # fmt: skip
    """Write every line (one channel, silence trimmed, at sample_rate) to out/<speaker>/<level>-<line>.<flac|ogg>.
    Returns (seconds written per speaker, what was left out and why)."""
    if codec not in SUFFIX:
        raise ValueError(f"codec={codec!r} must be one of {', '.join(SUFFIX)}")
    speakers, left_out = dialogue(root, languages)
    kept = {}
    for speaker, paths in speakers.items():
        if len(paths) < min_lines:
            left_out.append(f"{speaker} ({len(paths)} lines, fewer than {min_lines})")
            continue
        (out / speaker).mkdir(parents=True, exist_ok=True)
        kept[speaker] = 0.0
        for path in paths:
            line = trim_silence(load_mono(path, sample_rate, channel="mean"), sample_rate)
            target = out / speaker / f"{path.parent.parent.name}-{path.stem}{SUFFIX[codec]}"
            soundfile.write(target, line.numpy(), sample_rate, **({"format": "OGG", "subtype": "OPUS"} if codec == "opus" else {}))
            kept[speaker] += len(line) / sample_rate
    return kept, left_out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder to write, one subfolder per speaker")
    parser.add_argument("--root", type=Path, default=ROOT, help=f"the game's data (default {ROOT})")
    parser.add_argument("--languages", nargs="+", default=list(LANGUAGES), help="voice packages to read (default: cs nl)")
    parser.add_argument("--sample-rate", type=int, default=8000)
    parser.add_argument("--codec", choices=list(SUFFIX), default="flac", help="flac (lossless) or opus (about 20 kbit/s)")
    parser.add_argument("--min-lines", type=int, default=3, help="leave out speakers with fewer lines")
    args = parser.parse_args(argv)
    kept, left_out = write_speakers(args.out, args.root, tuple(args.languages), args.sample_rate, args.codec, args.min_lines)
    print(f"{len(kept)} speakers, {sum(kept.values()) / 60:.1f} minutes of speech, in {args.out}:")
    for speaker, seconds in sorted(kept.items(), key=lambda item: -item[1]):
        print(f"  {speaker}: {seconds / 60:.1f} min")
    print(f"left out: {len(left_out)}" + "".join(f"\n  {entry}" for entry in left_out))


if __name__ == "__main__":
    main()
