"""The embedded offline world: builds the bundled task files, tokenizer and tiny models from a seed.

Modules (torch and transformers are imported inside functions, so importing this package is cheap):

- `arithmetic`: the addition task: problems from a seed, worked solutions (correct and flawed),
  the row fields teacher contexts use, prompt and context templates, JSONL writing.
- `tokenizer`: the character-level tokenizer (`build_tokenizer`, Hugging Face format).
- `model`: `ModelSize`, `new_model` (tiny Llama), `widen_heads` (zero-padded heads for export),
  `save_model`.
- `config`: `BuildConfig`, everything that determines a build (`BuildConfig.smoke()` is the
  seconds-long variant the tests use).
- `training`: example streams over context mixes, the student's self-sample pool, `train`.
- `checkpoints`: `choose_base` / `choose_student`, picking the student among checkpoints.
- `accuracy`: `measure_accuracy`, `accuracy_on_test`, `MEASURED`, `accuracy_table` (what
  data/README.md reports).
- `builder`: `build(out, cfg)`, the pipeline that writes everything below and `build_report.json`.

Does NOT own: sampling (`gradalign.sampling`), answer extraction (`gradalign.graders`), loading
models or tasks for a diagnosis run (`gradalign.models`, `gradalign.tasks`) or the command line
(`gradalign build-world` and `gradalign accuracy` in `gradalign.cli.app`).

What gets built under `data/` (everything loadable with the public transformers API):

- `tasks/addition/{train,test}.jsonl`: rows with id, question, answer, solution, summary, example.
- `models/tokenizer`: shared char-level tokenizer; each model folder carries a copy of it.
- `models/teacher-strong`: trained to convergence on the mix of plain and context prompts.
- `models/student`: an early checkpoint of that same run, chosen by measured accuracy (about half
  right when sampled at temperature 1, but already able to use privileged context).
- `models/teacher-flawed`: teacher-strong fine-tuned on solutions that drop the carry out of any
  column summing to exactly 10.

Run `gradalign build-world --out data` (about 15 minutes on 2 CPU cores) or `--smoke` for a
seconds-long build with tiny sizes used by the tests.
"""

from gradalign.world import arithmetic
from gradalign.world.accuracy import MEASURED, Accuracy, accuracy_on_test, accuracy_table, measure_accuracy
from gradalign.world.builder import TEACHER_RUN_FIELDS, build
from gradalign.world.checkpoints import choose_base, choose_student
from gradalign.world.config import BuildConfig
from gradalign.world.model import ModelSize, new_model, save_model, widen_heads
from gradalign.world.tokenizer import CHARS, SPECIAL_TOKENS, build_tokenizer
from gradalign.world.training import train

__all__ = [
    "CHARS",
    "MEASURED",
    "SPECIAL_TOKENS",
    "TEACHER_RUN_FIELDS",
    "Accuracy",
    "BuildConfig",
    "ModelSize",
    "accuracy_on_test",
    "accuracy_table",
    "arithmetic",
    "build",
    "build_tokenizer",
    "choose_base",
    "choose_student",
    "measure_accuracy",
    "new_model",
    "save_model",
    "train",
    "widen_heads",
]
