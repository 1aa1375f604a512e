"""The Ollama Modelfile: the GGUF, a TEMPLATE that writes prompts exactly as hone trained them, and stop tokens.

A wrong TEMPLATE or a missing stop token is the top cause of "the model never stops" after an export:
the model was trained to end its turn with the chat template's end-of-turn token, and Ollama must both
write the prompt the same way and stop on that token. The chat template (Jinja, inside the tokenizer)
cannot be translated in general, so hone reads it by rendering: it renders a few conversations with
marker contents, takes the fixed text around each role's content, writes that as a Go template, and
then proves the Go template renders like `apply_chat_template` on several conversations
(`gotemplate.py`) before the Modelfile is written. A template that is not "fixed text around each
message" (one that changes the content, or depends on more than the message's position) is refused.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from hone.data.render import render
from hone.errors import UserError
from hone.exporting import gotemplate
from hone.exporting.gguf import gguf_file, verify_gguf, write_gguf
from hone.exporting.job import ExportJob
from hone.exporting.verify import Verification

ROLES = ("system", "user", "assistant")
MARK = "HONEMARK{}Q"                  # marker contents: plain letters and digits survive every template


@dataclass(frozen=True)
class ChatFormat:
    """A chat template as fixed text around each message: all an Ollama TEMPLATE needs to say."""
    default_system: str               # written first when the conversation opens without a system message
    before: dict[str, str]            # role -> text before its content
    after: dict[str, str]             # role -> text after its content
    generation: str                   # the assistant header the model continues from

    def go_template(self) -> str:
        """The TEMPLATE for Ollama's chat endpoint (Go text/template over .Messages)."""
        first = (f'{{{{ if and (eq $i 0) (ne .Role "system") }}}}{self.default_system}{{{{ end }}}}'
                 if self.default_system else "")
        branches = "".join(f'{{{{ {"if" if n == 0 else "else if"} eq .Role "{role}" }}}}'
                           f"{self.before[role]}{{{{ .Content }}}}{self.after[role]}"
                           for n, role in enumerate(ROLES))
        return f"{{{{ range $i, $_ := .Messages }}}}{first}{branches}{{{{ end }}}}{{{{ end }}}}{self.generation}"


def read_chat_format(tokenizer) -> ChatFormat:
    """The tokenizer's chat template as fixed text around each message, read by rendering marker conversations."""
    if not tokenizer.chat_template:
        raise UserError("the tokenizer has no chat template, so there is no prompt format to give Ollama; "
                        "export --format gguf and write the Modelfile TEMPLATE yourself")
    s, u, a, u2 = (MARK.format(n) for n in range(4))

    def text(*turns: tuple[str, str], generation: bool = False) -> str:
        try:
            return render(tokenizer, [{"role": r, "content": c} for r, c in turns], add_generation_prompt=generation)
        except Exception as exc:  # noqa: BLE001 - a template that raises on a plain conversation cannot be read
            raise UserError(f"the chat template cannot render a plain conversation ({exc}); "
                            "it cannot be written as an Ollama TEMPLATE") from None

    one = text(("user", u))
    opened = text(("user", u), generation=True)
    pair = text(("user", u), ("assistant", a))
    three = text(("user", u), ("assistant", a), ("user", u2))
    system = text(("system", s), ("user", u))
    try:
        head, user_after = _around(one, u)
        assert opened.startswith(one)
        between_user_assistant, assistant_after = _around(pair.split(u, 1)[1], a)
        assert between_user_assistant.startswith(user_after)
        assistant_before = between_user_assistant[len(user_after):]
        user_before = _around(three.split(a, 1)[1], u2)[0]
        assert user_before.startswith(assistant_after)
        user_before = user_before[len(assistant_after):]
        assert head.endswith(user_before)
        system_before, system_rest = _around(system, s)
        assert system_rest.split(u, 1)[0].endswith(user_before)
        system_after = system_rest.split(u, 1)[0][:len(system_rest.split(u, 1)[0]) - len(user_before)]
    except (AssertionError, ValueError):
        raise UserError("the chat template is not fixed text around each message, so it cannot be written as an "
                        "Ollama TEMPLATE; export --format gguf and write the Modelfile yourself") from None
    return ChatFormat(default_system=head[:len(head) - len(user_before)],
                      before={"system": system_before, "user": user_before, "assistant": assistant_before},
                      after={"system": system_after, "user": user_after, "assistant": assistant_after},
                      generation=opened[len(one):])


def _around(text: str, mark: str) -> tuple[str, str]:
    """(what comes before `mark`, what comes after it); `mark` must occur once."""
    if text.count(mark) != 1:
        raise ValueError(mark)
    before, after = text.split(mark)
    return before, after


# Conversations the TEMPLATE must render exactly as the chat template does (with the generation prompt).
PARITY_CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "Two lamps, please."}],
    [{"role": "user", "content": "Reverse apple"}, {"role": "assistant", "content": '{"reversed": "elppa"}'},
     {"role": "user", "content": "And river?\nThanks."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Ciao"},
     {"role": "assistant", "content": "Ciao!"}, {"role": "user", "content": "Ça va? 🙂"}],
]


def template_parity(template: str, tokenizer, system_prompt: str | None = None) -> list[str]:
    """Conversations on which `template` renders differently from the chat template (empty: it matches).

    `system_prompt` is the Modelfile's SYSTEM, which Ollama puts first when a conversation has none."""
    differ = []
    for messages in PARITY_CONVERSATIONS:
        sent = messages
        if system_prompt and messages[0]["role"] != "system":
            sent = [{"role": "system", "content": system_prompt}] + messages
        expected = render(tokenizer, sent, add_generation_prompt=True)
        if gotemplate.render(template, sent) != expected:
            differ.append(" / ".join(m["content"] for m in messages))
    return differ


def stop_tokens(tokenizer, chat: ChatFormat) -> list[str]:
    """The end-of-turn token(s): the tokenizer's EOS and any special token that closes or opens a turn."""
    special = set(tokenizer.all_special_tokens) | {t.content for t in tokenizer.added_tokens_decoder.values()
                                                   if t.special}
    stops = [tokenizer.eos_token] if tokenizer.eos_token else []
    for text in (chat.after["assistant"], chat.before["user"]):
        stops += sorted((t for t in special if t and t in text), key=text.index)
    return list(dict.fromkeys(stops))


def modelfile(gguf_name: str, template: str, stops: list[str], system_prompt: str | None) -> str:
    """The Modelfile text (`ollama create NAME -f Modelfile` in the folder that holds it)."""
    for value in [template] + ([system_prompt] if system_prompt else []):
        if '"""' in value:
            raise UserError('the chat template or system prompt contains """, which a Modelfile cannot quote')
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    if system_prompt:
        lines.append(f'SYSTEM """{system_prompt}"""')
    lines += [f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}" for stop in stops]
    return "\n".join(lines) + "\n"


def write_modelfile(folder: Path, gguf_name: str, tokenizer, system_prompt: str | None) -> None:
    """Write `folder/Modelfile`, refusing a TEMPLATE that does not render like the chat template."""
    chat = read_chat_format(tokenizer)
    template = chat.go_template()
    differ = template_parity(template, tokenizer, system_prompt)
    if differ:
        raise UserError(f"the Ollama TEMPLATE read from the chat template renders {len(differ)} of "
                        f"{len(PARITY_CONVERSATIONS)} test conversations differently (first: {differ[0]!r}); "
                        "export --format gguf and write the Modelfile yourself")
    text = modelfile(gguf_name, template, stop_tokens(tokenizer, chat), system_prompt)
    (folder / "Modelfile").write_text(text, encoding="utf-8")


def read_modelfile(path: Path) -> tuple[str, str | None, list[str]]:
    """(TEMPLATE, SYSTEM or None, stop tokens) of a Modelfile hone wrote."""
    text = path.read_text(encoding="utf-8")
    template = re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M)
    system = re.search(r'^SYSTEM """(.*?)"""$', text, re.S | re.M)
    stops = [json.loads(value) for value in re.findall(r"^PARAMETER stop (.+)$", text, re.M)]
    if template is None:
        raise UserError(f"{path} has no TEMPLATE")
    return template.group(1), system.group(1) if system else None, stops


def write_ollama(job: ExportJob, folder: Path) -> list[Path]:
    """The GGUF and a Modelfile beside it (`ollama create NAME -f Modelfile`)."""
    files = write_gguf(job, folder)
    write_modelfile(folder, files[0].name, job.tokenizer, job.system_prompt)
    return files + [folder / "Modelfile"]


def verify_ollama(job: ExportJob, folder: Path) -> Verification:
    """The GGUF as `gguf` verifies it, plus the Modelfile: its TEMPLATE renders like the chat template (with
    its SYSTEM where a conversation has none, as Ollama does) and it stops on the EOS token."""
    verification = verify_gguf(job, folder)
    template, system, stops = read_modelfile(folder / "Modelfile")
    differ = template_parity(template, job.tokenizer, system)
    verification.checks["ollama_template"] = ("same" if not differ else
                                              f"renders {len(differ)} conversations differently")
    verification.checks["ollama_stop"] = ("same" if job.tokenizer.eos_token in stops else
                                          f"EOS {job.tokenizer.eos_token!r} is not a stop token")
    verification.checks["ollama_from"] = "same" if f"FROM ./{gguf_file(folder).name}" in (
        folder / "Modelfile").read_text(encoding="utf-8") else "FROM does not name the GGUF"
    return verification
