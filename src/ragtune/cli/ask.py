"""`ragtune ask`: answer one question, or a JSONL file of questions, with the orchestrator."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ragtune.agents.context import ROUTING_POLICIES
from ragtune.cli.questions import read_questions
from ragtune.errors import DatabaseError, InputError, RagtuneError
from ragtune.tools.validation import MAX_K, k_problem


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `ask` to the `ragtune` parser."""
    p = commands.add_parser("ask", help="answer questions with the orchestrator",
                            description="Route, retrieve, decompose or ask the specialist, then "
                            "answer with citations.")
    p.add_argument("question", nargs="?", help="the question (omit with --questions)")
    p.add_argument("--questions", metavar="FILE.jsonl",
                   help='batch mode: {"id", "question"} per line; one JSON line out per question '
                        '({"id", "error"} for one that fails; the batch goes on and exits 3 if '
                        'any failed)')
    p.add_argument("--collection", "-c", default=None, help="collection to retrieve from")
    p.add_argument("--policy", choices=ROUTING_POLICIES, default=None, help="routing policy")
    p.add_argument("--model", default=None, metavar="PROVIDER:MODEL",
                   help="chat model (default local:gemma-3-270m)")
    p.add_argument("-k", type=int, default=None,
                   help=f"paragraphs per retrieval (1 to {MAX_K:,})")
    p.add_argument("--thread-id", default=None,
                   help="checkpoint the run under this thread; a thread that answered before "
                        "gets the question as its next turn")
    p.add_argument("--resume", action="store_true",
                   help="finish the interrupted run of --thread-id (no QUESTION)")
    p.add_argument("--trace", action="store_true", help="print the route trace")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run_ask)


def _line(qid: str, answer: Any) -> dict[str, Any]:
    return {"id": qid, "answer": answer.text,
            "citations": [{"id": c["id"], "title": c.get("title")} for c in answer.citations],
            "trace": answer.trace, "steps": answer.steps, "exhausted": answer.exhausted,
            "latency_s": round(answer.latency_s, 3)}


def print_trace(trace: list[dict[str, Any]]) -> None:
    """Print one line per trace event: step, node, decision, policy, reason, time."""
    for ev in trace:
        who = f" [{ev['policy']}]" if ev.get("policy") else ""
        print(f"  {ev.get('step', ''):>2} {ev.get('node', '')}: {ev.get('decision', '')}{who}"
              f" - {ev.get('reason', '')} ({ev.get('elapsed_ms', 0):.0f} ms)")


def _ask_in_thread(agent: Any, args: argparse.Namespace) -> Any:
    """Ask the question, resume the thread's interrupted run, or refuse to lose that run."""
    if args.resume:
        return agent.resume(args.thread_id)
    if args.thread_id is not None and agent.pending(args.thread_id):
        raise InputError(f"Thread {args.thread_id!r} has an interrupted run: finish it with "
                         f"`ragtune ask --thread-id {args.thread_id} --resume`, or use another "
                         "thread")
    return agent.ask(args.question, thread_id=args.thread_id)


def run_ask(args: argparse.Namespace) -> int:
    """Answer the question(s); in batch mode a failing question gets an error line."""
    from ragtune.agent import Agent

    if args.resume:
        if args.thread_id is None or args.question is not None or args.questions is not None:
            raise InputError("--resume needs --thread-id T and no QUESTION")
    elif (args.question is None) == (args.questions is None):
        raise InputError("give a QUESTION or --questions FILE.jsonl (not both)")
    if args.thread_id is not None and args.questions is not None:
        raise InputError("--thread-id takes one QUESTION, not --questions")
    if args.k is not None and (problem := k_problem(args.k, "-k")):
        raise InputError(problem)
    batch = read_questions(args.questions, allow_blank=True) if args.questions else None
    overrides = {"collection": args.collection, "routing_policy": args.policy,
                 "model": args.model, "k": args.k}
    with Agent(checkpoint=args.thread_id is not None, database_url=args.database_url,
               home=args.home, **overrides) as agent:
        if batch is None:
            answer = _ask_in_thread(agent, args)
            if args.json:
                print(json.dumps({**_line("1", answer), "question": args.question,
                                  "thread_id": answer.thread_id, "turn": answer.turn}))
                return 0
            print(answer.text or "(no answer)")
            for number, c in enumerate(answer.citations, 1):
                print(f"  [{number}] {c.get('title') or c.get('source')}")
            if answer.exhausted:
                print("  (a budget ran out: answered with what was gathered)")
            if args.trace:
                print_trace(answer.trace)
            return 0
        failures = 0
        for qid, question in batch:
            try:
                print(json.dumps(_line(qid, agent.ask(question))), flush=True)
            except DatabaseError:
                raise  # every later question would fail the same way: stop with exit 4
            except RagtuneError as exc:
                failures += 1
                print(json.dumps({"id": qid, "error": str(exc)}), flush=True)
        if failures:
            print(f"error: {failures} of {len(batch)} questions failed (see their \"error\" "
                  "lines)", file=sys.stderr)
            return InputError.exit_code
    return 0
