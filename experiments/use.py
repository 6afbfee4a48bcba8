"""Use a trained run: ``ablate generate RUN_DIR --prompt TEXT`` continues a prompt with an LM
run; ``ablate translate RUN_DIR < sources.txt`` translates with a translation run; ``ablate
fill-mask RUN_DIR --text TEXT`` fills in each ``<mask>`` with a masked-LM run; ``ablate
attention RUN_DIR --text TEXT`` draws its attention maps; ``ablate export RUN_DIR --hf OUT``
writes it as a Hugging Face model. All read the run's own ``config.yaml``, ``tokenizer.json`` and
newest checkpoint, on CPU or GPU."""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, Optional

import torch

from experiments.run.config import ConfigError, RunConfig, load_config
from lit.checkpointing import checkpoint_damage, checkpoints
from tools.errors import report_error
from lit.data.tokenizer import BOS, EOS, MASK, PAD, TextTokenizer
from lit.specs import TASKS, task_spec
from variants import build_model

TABLE_POSITIONS = ("learned", "sinusoidal")  # position schemes with a fixed-size table


class UseError(ValueError):
    """A run directory that cannot be used this way; the message says why."""


@dataclass
class LoadedRun:
    cfg: RunConfig
    tokenizer: TextTokenizer
    model: torch.nn.Module
    checkpoint: Path


def _newest_checkpoint(run_dir: Path) -> Path:
    """The run's newest checkpoint, verified whole (its zip CRCs); a damaged one is refused by
    name, never replaced by an older one behind the user's back (nor renamed: using a run
    changes nothing in it)."""
    found = checkpoints(run_dir / "checkpoints")
    if not found:
        raise UseError(f"{run_dir}: no complete checkpoint in checkpoints/ (the run has not saved one yet)")
    problem = checkpoint_damage(found[0])
    if problem is not None:
        raise UseError(f"{found[0]}: damaged checkpoint, not loaded: {problem}; ablate train "
                       f"{run_dir / 'config.yaml'} sets it aside and trains again from the previous "
                       f"checkpoint (or the start)")
    return found[0]


def load_run(run_dir: str | Path, device: Optional[str] = None) -> LoadedRun:
    """The run's model (weights of its newest checkpoint, evaluation mode) and tokenizer. A
    damaged newest checkpoint is refused (:class:`UseError` naming it)."""
    run_dir = Path(run_dir)
    for name in ("config.yaml", "tokenizer.json"):
        if not (run_dir / name).is_file():
            raise UseError(f"{run_dir}: no {name}; is this a run directory (runs/<experiment>/<run>)?")
    checkpoint = _newest_checkpoint(run_dir)
    try:
        cfg = load_config([run_dir / "config.yaml"])
    except ConfigError as err:
        raise UseError(f"{run_dir}: {err}") from None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = TextTokenizer.load(run_dir / "tokenizer.json")
    try:
        model = build_model(cfg.model_for(tokenizer))
    except ConfigError as err:
        raise UseError(f"{run_dir}: {err}") from None
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
    return LoadedRun(cfg, tokenizer, model.to(device).eval(), checkpoint)


def check_max_new_tokens(max_new_tokens: int) -> None:
    if max_new_tokens < 1:
        raise UseError(f"--max-new-tokens {max_new_tokens}: give 1 or more new tokens to generate")


class TextStream:
    """The text of generated tokens, handed to ``write`` piece by piece as the tokens arrive: a
    piece goes out once its tokens decode to whole characters (a byte-level token may end inside
    one), so the pieces join to ``tokenizer.decode`` of all the tokens."""

    def __init__(self, tokenizer: TextTokenizer, write: Callable[[str], None]) -> None:
        self.tokenizer, self.write, self.pending = tokenizer, write, []

    def push(self, token: int) -> None:
        self.pending.append(token)
        text = self.tokenizer.decode(self.pending)
        if text and not text.endswith("\ufffd"):  # U+FFFD: the bytes so far end inside a character
            self.write(text)
            self.pending.clear()

    def close(self) -> None:
        text = self.tokenizer.decode(self.pending)
        if text:
            self.write(text)
        self.pending.clear()


def generate(run: LoadedRun, prompt: str, max_new_tokens: int = 50, temperature: float = 1.0,
             top_k: Optional[int] = None, top_p: Optional[float] = None, seed: int = 0,
             stream: Optional[Callable[[str], None]] = None) -> str:
    """The continuation of ``prompt`` (sampled; ``temperature`` 0 is greedy), up to ``<eos>``.
    ``stream``, when given, receives that text in pieces as the tokens are drawn."""
    from variants.decoding import sample_steps

    check_max_new_tokens(max_new_tokens)
    check_command(run, "generate")
    tok = run.tokenizer
    ids = [tok.eos_id] + tok.encode(prompt)  # training streams put <eos> before every example
    limit = run.cfg.model.max_seq_len
    if run.cfg.model.position in TABLE_POSITIONS and len(ids) + max_new_tokens > limit:
        raise UseError(f"the prompt ({len(ids)} tokens) plus --max-new-tokens {max_new_tokens} exceeds the "
                       f"{limit} positions of this run's {run.cfg.model.position} position table: "
                       f"at most {max(limit - len(ids), 0)} new tokens after this prompt")
    device = next(run.model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    pieces = TextStream(tok, stream or (lambda text: None))
    out: list[int] = []
    for step in sample_steps(run.model, torch.tensor([ids], device=device), max_new_tokens, temperature, top_k,
                             top_p, generator):
        out.append(int(step[0, 0]))
        if out[-1] == tok.eos_id:  # the text ends there: what would follow is never shown
            break
        pieces.push(out[-1])
    pieces.close()
    return tok.decode(out)


def fill_mask(run: LoadedRun, text: str, top_k: int = 5) -> list[list[tuple[str, float]]]:
    """For each ``<mask>`` of ``text``, in order, the ``top_k`` word pieces the run's masked-LM
    puts there with their probabilities (special tokens left out). A space before ``<mask>``
    belongs to the masked word, as in training, where a word piece carries its leading space."""
    tok = run.tokenizer
    check_command(run, "fill-mask")
    if MASK not in text:
        raise UseError(f"--text has no {MASK}: write {MASK} where a word should be filled in")
    if top_k < 1:
        raise UseError(f"--top-k {top_k}: give 1 or more")
    ids = _one_input_ids(tok, text.replace(f" {MASK}", MASK))
    if run.cfg.model.position in TABLE_POSITIONS and len(ids) > run.cfg.model.max_seq_len:
        raise UseError(f"the text ({len(ids)} tokens) exceeds the {run.cfg.model.max_seq_len} positions of this "
                       f"run's {run.cfg.model.position} position table")
    device = next(run.model.parameters()).device
    with torch.no_grad():
        logits = run.model(torch.tensor([ids], device=device))[0].float()
    logits[:, : tok.n_specials] = float("-inf")
    found = []
    for position in [i for i, t in enumerate(ids) if t == tok.mask_id]:
        probs, best = logits[position].softmax(-1).topk(min(top_k, logits.size(-1) - tok.n_specials))
        found.append([(tok.tokenizer.decode([int(i)]), float(p)) for p, i in zip(probs, best)])
    return found


def _one_input_ids(tok: TextTokenizer, text: str) -> list[int]:
    """``text`` as a one-input model saw text in training: after ``<eos>`` (the streams put one
    before every example), and for a masked-LM (whole examples) followed by one too."""
    return [tok.eos_id] + tok.encode(text) + ([tok.eos_id] if tok.mask_id is not None else [])


def check_command(run: LoadedRun, command: str) -> None:
    """Refuse a run of a task whose trained runs another command uses (its spec's ``command``)."""
    own = task_spec(run.cfg.task.name).command
    if own != command:
        raise UseError(f"{run.cfg.run_name} is a {run.cfg.task.name} run: {command} needs a run of "
                       f"task {', '.join(n for n in TASKS.names() if TASKS.get(n).command == command)}; "
                       f"use ablate {own}")


def check_beam(beam: int) -> None:
    if beam < 1:
        raise UseError(f"--beam {beam}: the beam must be 1 or more (1 is greedy decoding)")


def translate(run: LoadedRun, sources: Iterable[str], beam: int = 4, batch_size: int = 32,
              max_len: Optional[int] = None) -> Iterator[str]:
    """One detokenized translation per source line, in order (beam search; ``beam`` 1 is greedy).
    An empty or blank line gives an empty line, so the output stays aligned with the input.
    The beam and the run's task are checked when called, before any line is read."""
    check_beam(beam)
    check_command(run, "translate")
    return _translations(run, sources, beam, batch_size, max_len or run.cfg.task.max_decode_len)


def _translations(run: LoadedRun, sources: Iterable[str], beam: int, batch_size: int, max_len: int) -> Iterator[str]:
    from variants.decoding import beam_translate, greedy_translate

    tok, limit = run.tokenizer, run.cfg.model.max_seq_len
    device = next(run.model.parameters()).device
    lines: list[Optional[list[int]]] = []  # a line's token ids; None: a blank line, never decoded

    def flush():
        batch = [ids for ids in lines if ids is not None]
        hyps: list[list[int]] = []
        if batch:
            width = max(map(len, batch))
            src = torch.full((len(batch), width), tok.pad_id, dtype=torch.long)
            for i, ids in enumerate(batch):
                src[i, :len(ids)] = torch.tensor(ids)
            src = src.to(device)
            if beam > 1:
                hyps = beam_translate(run.model, src, tok.bos_id, tok.eos_id, max_len, beam=beam,
                                      length_penalty=run.cfg.task.length_penalty)
            else:
                hyps = greedy_translate(run.model, src, tok.bos_id, tok.eos_id, max_len)
        found = iter(hyps)
        out = ["" if ids is None else tok.decode(next(found)) for ids in lines]
        lines.clear()
        return out

    # every line is encoded and checked before the first is decoded: an over-long line is refused
    # before any output, never after part of the input was translated and the rest abandoned
    encoded = [None if not line.strip() else tok.encode(line.rstrip("\n")) + [tok.eos_id] for line in sources]
    long = [(number, len(ids)) for number, ids in enumerate(encoded, 1) if ids is not None and len(ids) > limit]
    if long:
        shown = ", ".join(f"{number} ({n} tokens)" for number, n in long[:5]) + (" …" if len(long) > 5 else "")
        raise UseError(f"{len(long)} input line(s) longer than model.max_seq_len={limit} tokens: line {shown}; "
                       "split them and translate again (nothing was translated)")
    filled = 0
    for ids in encoded:
        lines.append(ids)
        if ids is None:
            continue
        filled += 1
        if filled == batch_size:
            yield from flush()
            filled = 0
    if lines:
        yield from flush()


def read_lines(stream: IO, name: str = "stdin") -> list[str]:
    """Every line of ``stream``, read as UTF-8 (a binary stream's bytes are checked: a line that is
    not UTF-8 is refused, naming ``name`` and its line number); newlines as in text mode."""
    raw = getattr(stream, "buffer", None)
    if raw is None:  # a text stream: already decoded
        return list(stream)
    data = raw.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        number, start = data.count(b"\n", 0, err.start) + 1, data.rfind(b"\n", 0, err.start) + 1
        raise UseError(f"{name} line {number}: not UTF-8 text (byte {err.start - start + 1} of the line: "
                       f"{err.reason})") from None
    return list(io.StringIO(text, newline=None))


def _token_labels(tok: TextTokenizer, ids: list[int]) -> list[str]:
    return [tok.tokenizer.decode([i], skip_special_tokens=False) or tok.tokenizer.id_to_token(i) for i in ids]


def _pick(what: str, chosen: Optional[int], count: int) -> list[int]:
    if chosen is None:
        return list(range(count))
    if not 0 <= chosen < count:
        raise UseError(f"--{what} {chosen}: this run has {what}s 0..{count - 1}")
    return [chosen]


def _heatmaps(maps: torch.Tensor, rows: list[str], cols: list[str], layers: list[int], heads: list[int],
              title: str, path: Path) -> Path:
    """One panel per (layer, head) of ``maps`` (layers, H, queries, keys), queries down, keys across."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    side = 2.4 if len(layers) * len(heads) > 1 else 0.32 * max(len(rows), len(cols)) + 2
    fig, axes = plt.subplots(len(layers), len(heads), figsize=(side * len(heads) + 0.8, side * len(layers) + 0.6),
                             squeeze=False)
    labelled = len(layers) * len(heads) == 1 or max(len(rows), len(cols)) <= 16
    for r, layer in enumerate(layers):
        for c, head in enumerate(heads):
            ax = axes[r][c]
            image = ax.imshow(maps[layer, head].cpu().numpy(), vmin=0.0, vmax=1.0, cmap="viridis",
                              interpolation="nearest")
            ax.set_title(f"layer {layer} head {head}", fontsize=8)
            if labelled:
                ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=6)
                ax.set_yticks(range(len(rows)), rows, fontsize=6)
            else:
                ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention probability")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def attention_figures(run: LoadedRun, text: str, out: str | Path, layer: Optional[int] = None,
                      head: Optional[int] = None) -> list[Path]:
    """PNG heatmaps of the run's attention on ``text``: every layer x head (or the one chosen).
    LM: ``self_attention.png``. Translation: the model's greedy translation of ``text`` is fed
    back as the target, and ``encoder_self_attention.png``, ``decoder_self_attention.png`` and
    ``cross_attention.png`` (target x source) are written."""
    from variants.decoding import greedy_translate
    from variants.maps import attention_maps

    tok, cfg, out = run.tokenizer, run.cfg.model, Path(out)
    device = next(run.model.parameters()).device
    name = run.cfg.run_name
    if len(run.model.example_inputs(torch.zeros(1, 1))) == 1:  # one input: an LM or an encoder
        ids = _one_input_ids(tok, text)
        if cfg.position in TABLE_POSITIONS and len(ids) > cfg.max_seq_len:
            raise UseError(f"the text ({len(ids)} tokens) exceeds the {cfg.max_seq_len} positions of this run's "
                           f"{cfg.position} position table")
        layers, heads = _pick("layer", layer, cfg.n_layers), _pick("head", head, cfg.n_heads)
        maps = attention_maps(run.model, torch.tensor([ids], device=device))["self"][:, 0]
        labels = _token_labels(tok, ids)
        out.mkdir(parents=True, exist_ok=True)
        return [_heatmaps(maps, labels, labels, layers, heads, f"{name}: self-attention", out / "self_attention.png")]
    src = tok.encode(text) + [tok.eos_id]
    if cfg.position in TABLE_POSITIONS and len(src) > cfg.max_seq_len:
        raise UseError(f"the text ({len(src)} tokens) exceeds model.max_seq_len={cfg.max_seq_len}")
    layers = _pick("layer", layer, max(cfg.encoder_layers, cfg.decoder_layers))
    heads = _pick("head", head, cfg.n_heads)
    src_t = torch.tensor([src], device=device)
    hyp = greedy_translate(run.model, src_t, tok.bos_id, tok.eos_id, run.cfg.task.max_decode_len)[0]
    tgt = [tok.bos_id] + list(hyp)
    maps = attention_maps(run.model, src_t, torch.tensor([tgt], device=device))
    src_labels, tgt_labels = _token_labels(tok, src), _token_labels(tok, tgt)
    out.mkdir(parents=True, exist_ok=True)
    translation = tok.decode(hyp)
    written = []
    for key, rows, cols, n in (("encoder", src_labels, src_labels, cfg.encoder_layers),
                               ("decoder", tgt_labels, tgt_labels, cfg.decoder_layers),
                               ("cross", tgt_labels, src_labels, cfg.decoder_layers)):
        kept = [i for i in layers if i < n]
        title = f"{name}: {key} attention" + (f" (target: {translation})" if key != "encoder" else "")
        filename = f"{key}_self_attention.png" if key != "cross" else "cross_attention.png"
        written.append(_heatmaps(maps[key][:, 0], rows, cols, kept, heads, title, out / filename))
    return written


def attention_command(args) -> int:
    try:
        run = load_run(args.run_dir, args.device)
        for path in attention_figures(run, args.text, args.out or Path(args.run_dir) / "attention", args.layer,
                                      args.head):
            print(f"wrote {path}")
    except (UseError, ValueError) as err:
        report_error("ablate attention", err)
        return 2
    return 0


# what an export writes (transformers' save_pretrained of the model and of its fast tokenizer)
HF_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
            "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def check_export_target(out: str | Path, force: bool = False) -> None:
    """``out`` is a new or empty directory, or ``force`` allows writing into a non-empty one;
    checked before the run is loaded. A file is refused either way."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UseError(f"--hf {out}: exists and is not a directory; the export writes a directory")
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not present or force:
        return
    clashes = [name for name in present if name in HF_FILES or name.startswith("model-")]
    if clashes:
        what = f"the export would overwrite {', '.join(clashes)}"
    else:
        what = f"it holds {', '.join(present[:5])}" + (f" and {len(present) - 5} more" if len(present) > 5 else "")
    raise UseError(f"--hf {out}: not an empty directory: {what}; choose a new or empty directory, or pass --force")


def export_hf(run: LoadedRun, out: str | Path, family: Optional[str] = None) -> str:
    """Write the run as a Hugging Face model directory (weights, config, generation config and
    tokenizer) that ``transformers``' ``Auto*.from_pretrained(out)`` loads; returns its class name.
    ``family``: the ``model_type`` to write (default: the first that carries the composition)."""
    from transformers import PreTrainedTokenizerFast

    from variants.interop import to_hf

    tok, out = run.tokenizer, Path(out)
    hf_model = to_hf(run.model.float().cpu(), bos_id=tok.bos_id, eos_id=tok.eos_id, family=family)
    generation = getattr(hf_model, "generation_config", None)  # None: a model that does not generate (an encoder)
    if generation is not None:
        generation.bos_token_id, generation.eos_token_id, generation.pad_token_id = tok.bos_id, tok.eos_id, tok.pad_id
        if hf_model.config.is_encoder_decoder:
            generation.decoder_start_token_id = tok.bos_id  # our decoders start from <bos>
    out.mkdir(parents=True, exist_ok=True)
    hf_model.save_pretrained(out)
    masks = {"mask_token": MASK} if tok.mask_id is not None else {}  # a masked-LM tokenizer's <mask>
    fast = PreTrainedTokenizerFast(tokenizer_file=str(run.checkpoint.parent.parent / "tokenizer.json"),
                                   pad_token=PAD, bos_token=BOS, eos_token=EOS, **masks)
    fast.save_pretrained(out)
    return type(hf_model).__name__


def export_command(args) -> int:
    try:
        check_export_target(args.hf, args.force)
        run = load_run(args.run_dir, "cpu")
        name = export_hf(run, args.hf, args.family)
    except (UseError, ValueError, NotImplementedError) as err:
        report_error("ablate export", err)
        return 2
    except ImportError as err:
        report_error("ablate export", f"{err}; install it with pip install 'ablate[hf]'")
        return 2
    print(f"wrote {name} and its tokenizer to {args.hf}")
    return 0


def generate_command(args) -> int:
    """The prompt and its continuation on stdout, written as the tokens are drawn."""
    shown = False

    def show(piece: str) -> None:
        nonlocal shown
        sys.stdout.write(piece if shown else args.prompt + piece)  # the prompt once the checks have passed
        sys.stdout.flush()
        shown = True

    try:
        check_max_new_tokens(args.max_new_tokens)
        run = load_run(args.run_dir, args.device)
        generate(run, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed,
                 stream=show)
    except (UseError, ValueError) as err:
        if shown:
            print(flush=True)
        report_error("ablate generate", err)
        return 2
    print("" if shown else args.prompt, flush=True)
    return 0


def fill_mask_command(args) -> int:
    """Each ``<mask>``'s fillers, most probable first, one per line with its probability."""
    try:
        run = load_run(args.run_dir, args.device)
        found = fill_mask(run, args.text, args.top_k)
    except (UseError, ValueError) as err:
        report_error("ablate fill-mask", err)
        return 2
    for number, fillers in enumerate(found, 1):
        if len(found) > 1:
            print(f"{MASK} {number}:")
        for piece, p in fillers:
            print(f"  {p:6.3f}  {piece!r}")
    return 0


def _stdin_lines() -> Iterator[str]:
    yield from read_lines(sys.stdin)


def translate_command(args) -> int:
    try:
        check_beam(args.beam)
        run = load_run(args.run_dir, args.device)
        for line in translate(run, _stdin_lines(), args.beam):  # stdin is read once the run is checked
            print(line, flush=True)
    except (UseError, ValueError) as err:
        report_error("ablate translate", err)
        return 2
    return 0
