"""air-run chat: a multi-turn conversation on a terminal, or one user message per input line.

On a terminal: streamed answers, line editing and history (readline), /reset, /stats, /help;
Ctrl-C stops the current answer and keeps the chat, Ctrl-D exits. Otherwise each input line is
a user message and each answer is printed (with --json: one object per turn)."""

from __future__ import annotations

import dataclasses
import json
import signal
import sys

import click

from air.errors import AirError
from .options import explanation, generation_options, load_bundle, trust_options

HELP = "/reset starts the conversation again, /stats shows the last turn's counters, Ctrl-C stops an answer, Ctrl-D exits"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("bundle", type=click.Path())
@click.option("--system", help="System message that starts the conversation.")
@generation_options
@click.option("--ignore-eos", is_flag=True, help="Answer until --max-tokens, past end-of-sequence tokens.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per turn instead of streaming text.")
@trust_options
def main(bundle, system, max_tokens, temperature, top_p, seed, speculate, proposer, quality, explain, memory_budget,
         threads, ignore_eos, as_json, trusted, rehash):
    """Chat with a compiled BUNDLE (multi-turn, the caches kept across turns)."""
    try:
        from .chat import Conversation

        loaded = load_bundle(bundle, threads, memory_budget, trusted, rehash)
        chat = Conversation(loaded, system=system)
    except AirError as e:
        click.echo(f"air-run: error: {e}", err=True)
        sys.exit(2)
    options = dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, speculate=speculate,
                   proposer=proposer, quality=quality, ignore_eos=ignore_eos)
    loop = _Loop(chat, options, as_json, explain, speculate)
    try:
        loop.terminal() if sys.stdin.isatty() and not as_json else loop.lines()
    finally:
        chat.template.close()
    sys.exit(loop.status)


class _Loop:
    def __init__(self, chat, options: dict, as_json: bool, explain: bool, speculate):
        self.chat, self.options, self.as_json, self.explain, self.speculate = chat, options, as_json, explain, speculate
        self.turns, self.last = 0, None
        self.interrupted = False
        self.status = 0

    def terminal(self) -> None:
        import readline  # noqa: F401 - gives input() line editing and history

        click.echo(f"chatting with {self.chat.bundle.manifest['name']}; {HELP}", err=True)
        while True:
            try:
                line = input("> ")
            except EOFError:
                click.echo("", err=True)
                return
            except KeyboardInterrupt:
                click.echo("", err=True)  # Ctrl-C at the prompt drops the line
                continue
            self.handle(line, stream=True)

    def lines(self) -> None:
        for line in sys.stdin:
            self.handle(line.rstrip("\n"), stream=not self.as_json)

    def handle(self, line: str, stream: bool) -> None:
        if not line.strip():
            return
        command = line.strip()
        if command == "/reset":
            self.chat.reset()
            click.echo("[conversation reset]", err=True)
        elif command == "/stats":
            click.echo(self._stats_line(), err=True)
        elif command == "/help":
            click.echo(HELP, err=True)
        else:
            self.answer(line, stream)

    def answer(self, text: str, stream: bool) -> None:
        write = (lambda delta: (sys.stdout.write(delta), sys.stdout.flush())) if stream else None
        self.interrupted = False
        previous = signal.signal(signal.SIGINT, self._interrupt)
        try:
            turn = self.chat.ask(text, on_text=write, should_stop=lambda: self.interrupted, **self.options)
        except AirError as e:
            click.echo(f"air-run: error: {e}", err=True)  # the conversation goes on without this message
            self.status = 2
            return
        finally:
            signal.signal(signal.SIGINT, previous)
        self.turns += 1
        self.last = turn
        result = turn.result
        if turn.dropped_turns:
            click.echo(f"[dropped the {turn.dropped_turns} oldest turn(s) to fit the context]", err=True)
        if self.explain:
            click.echo(explanation(result, self.speculate), err=True)
        if self.as_json:
            route = dataclasses.asdict(result.route) if result.route else None
            print(json.dumps({"turn": self.turns, "user": text, "text": result.text, "tokens": result.tokens,
                              "finish_reason": result.finish_reason, "dropped_turns": turn.dropped_turns,
                              "stats": result.stats, "route": route}), flush=True)
            return
        if stream:
            sys.stdout.write("\n")
        else:
            sys.stdout.write(result.text + "\n")
        if result.finish_reason == "cancelled":
            click.echo("[answer stopped]", err=True)
        sys.stdout.flush()

    def _interrupt(self, signum, frame) -> None:
        self.interrupted = True

    def _stats_line(self) -> str:
        if self.last is None:
            return "[no answer yet]"
        s = self.last.result.stats
        return (f"[turn {self.turns}: prompt {s['prompt_tokens']} tokens ({s['reused_tokens']} reused, "
                f"{s['prefilled_tokens']} prefilled), {s['generated_tokens']} generated, first token "
                f"{s['time_to_first_token_seconds']:.3f}s, decode {s['decode_tokens_per_second']} tok/s, "
                f"finish: {self.last.result.finish_reason}]")
