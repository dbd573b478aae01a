"""The orchestrator's nodes: thin wrappers that call core functions and report a trace.

Nodes are synchronous on purpose: their work blocks (database I/O, embeddings, model generation),
and LangGraph runs sync nodes in a worker thread under `ainvoke`/`astream`, so the event loop (and
LangGraph's dev server, which fails runs that block it) stays free, while `invoke` works too. Each
node returns a partial state: its results, `steps: 1`, and one `TraceEvent` saying what it decided
and why.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.documents import Document
from langgraph.runtime import Runtime
from langgraph.types import Overwrite

from ragtune.agents.composition import decided_by_rule, question_shape
from ragtune.agents.context import Context
from ragtune.errors import InputError
from ragtune.graphs.resources import Resources
from ragtune.graphs.state import (
    AgentState,
    Citation,
    SolveState,
    SubQuestion,
    TraceEvent,
    Turn,
)


def context_of(runtime: Runtime[Context] | None) -> Context:
    """Return the run's `Context` (defaults when the caller passed none)."""
    context = getattr(runtime, "context", None)
    if context is None:
        return Context()
    if isinstance(context, dict):
        return Context(**context)
    return context


def validate_question(question: Any, max_chars: int) -> str:
    """Return the stripped question, or raise `InputError` saying what is wrong with it."""
    if not isinstance(question, str):
        raise InputError(f"The question must be a string, not {type(question).__name__}")
    text = question.strip()
    if not text:
        raise InputError("The question is empty")
    from ragtune.tools.validation import text_problem

    problem = text_problem(text)
    if problem is not None:
        raise InputError(f"The question {problem}")
    if len(text) > max_chars:
        raise InputError(f"The question has {len(text)} characters; the limit is {max_chars} "
                         "(Context.max_question_chars)")
    return text


def event(state: Mapping[str, Any], node: str, decision: str, started: float,
          **extra: Any) -> TraceEvent:
    """Build the trace event of a node that started at `started` (perf_counter seconds)."""
    return TraceEvent(step=state.get("steps", 0) + 1, node=node, decision=decision,
                      elapsed_ms=round((time.perf_counter() - started) * 1000, 2),
                      **extra)


def citations_of(documents: Sequence[Document]) -> list[Citation]:
    """Return the citation records of `documents`."""
    return [Citation(id=str(d.id), title=d.metadata.get("title"),
                     source=str(d.metadata.get("source", ""))) for d in documents]


class OrchestratorNodes:
    """The node functions, bound to the `Resources` they draw models and the store from."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources

    def route(self, state: AgentState, runtime: Runtime[Context]) -> dict[str, Any]:
        """Choose the first action for the question: retrieve, decompose or specialist."""
        started = time.perf_counter()
        ctx = context_of(runtime)
        question = validate_question(state.get("question"), ctx.max_question_chars)
        router = self.resources.router(ctx)
        decision = router.route(question)
        shape = question_shape(question)
        if decision.action == "retrieve" and decided_by_rule(shape):
            decision = dataclasses.replace(
                decision, action="decompose",
                reason=f"{shape.kind} of {' and '.join(shape.candidates)}: one sub-question each, "
                       f"answer decided by rule; router said retrieve ({decision.reason})")
        domain = self._domain_match(question, ctx) if decision.action != "specialist" else None
        if domain is not None:
            name, similarity = domain
            decision = dataclasses.replace(
                decision, action="specialist",
                reason=f"question is in adapter {name}'s domain (cosine {similarity:.2f} >= "
                       f"{ctx.specialist_threshold}); router said {decision.action}")
        # A new question on a thread starts from a clean slate: Overwrite bypasses the reducers
        # that would otherwise carry the previous question's documents, counters and trace.
        first = event({}, "route", decision.action, started, policy=decision.policy,
                      reason=decision.reason, scores=decision.scores,
                      detail={"fallback": decision.fallback, "decision_ms": decision.elapsed_ms})
        return {
            "question": question, "route": decision.action, "query": question,
            "steps": Overwrite(1), "trace": Overwrite([first]), "documents": Overwrite([]),
            "retrievals": Overwrite(0), "sub_answers": Overwrite([]), "usage": Overwrite({}),
            "sub_questions": [], "specialist_answer": None, "evidence_ok": None, "draft": None,
            "specialist_adapter": domain[0] if domain else None,
            "answer": "", "citations": [], "exhausted": False, "retrieved": [],
        }

    def _domain_match(self, question: str, ctx: Context) -> tuple[str, float] | None:
        """The knowledge/custom adapter whose domain centroid is closest, if close enough."""
        domains = self.resources.domain_adapters(ctx)
        if not domains:
            return None
        import numpy as np

        vector = np.asarray(self.resources.embeddings().embed_query(question), dtype=np.float32)
        vector /= float(np.linalg.norm(vector)) or 1.0
        name, similarity = max(((n, float(c @ vector)) for n, c in domains), key=lambda x: x[1])
        return (name, similarity) if similarity >= ctx.specialist_threshold else None

    def retrieve(self, state: AgentState, runtime: Runtime[Context]) -> dict[str, Any]:
        """Retrieve the k best paragraphs (distinct sources) for the current query."""
        from ragtune.tools.distinct import retrieve_sources

        started = time.perf_counter()
        ctx = context_of(runtime)
        query = state.get("query") or state["question"]
        store = self.resources.store(ctx)
        hits = retrieve_sources(store, query, ctx.k, mode=ctx.search_mode)
        docs = [h.to_document() for h in hits]
        return {
            "documents": docs, "retrievals": 1, "steps": 1,
            "trace": [event(state, "retrieve", f"{len(docs)} paragraphs", started,
                            reason=f"{ctx.search_mode} search, k={ctx.k}",
                            detail={"query": query, "titles": [d.metadata.get("title")
                                                               for d in docs]})],
        }

    def retrieve_links(self, state: AgentState, runtime: Runtime[Context]) -> dict[str, Any]:
        """Retrieve for the whole question, then follow the links its paragraphs mention."""
        from ragtune.tools.distinct import collapse_sources
        from ragtune.tools.multihop import retrieve_with_links

        started = time.perf_counter()
        ctx = context_of(runtime)
        store = self.resources.store(ctx)
        # Chunks of one paragraph would take two of the reader's k places.
        hits = collapse_sources(retrieve_with_links(store, state["question"], first=ctx.k,
                                                    linked=ctx.k, mode=ctx.search_mode))
        docs = [h.to_document() for h in hits]
        return {
            "documents": docs, "retrievals": 1, "steps": 1,
            "trace": [event(state, "retrieve_links", f"{len(docs)} paragraphs", started,
                            reason=f"question + linked paragraphs ({ctx.search_mode}, k={ctx.k})",
                            detail={"titles": [d.metadata.get("title") for d in docs]})],
        }

    def check_evidence(self, state: AgentState,
                             runtime: Runtime[Context]) -> dict[str, Any]:
        """Decide whether the evidence covers the question; if not, rewrite the query.

        The event's detail records the distinct sources gathered so far and whether the last
        retrieval (a rewrite) added none (``stalled``), which ends the loop (`after_check`).
        """
        from ragtune.agents.evidence import (
            check_evidence,
            distinct_sources,
            rewrite_query,
            rewrite_stalled,
        )
        from ragtune.graphs.routing import last_check

        started = time.perf_counter()
        ctx = context_of(runtime)
        docs = state.get("documents", [])
        check = check_evidence(state["question"], docs, ctx.evidence_threshold)
        sources = distinct_sources(docs)
        stalled = rewrite_stalled(sources, last_check(state).get("sources_seen"))
        update: dict[str, Any] = {"evidence_ok": check.enough, "steps": 1}
        reason = f"coverage {check.coverage:.2f} (threshold {ctx.evidence_threshold})"
        if not check.enough and stalled:
            reason += "; the rewrite brought no new source, so answering with what was found"
        elif not check.enough:
            update["query"] = rewrite_query(state["question"], check.missing, docs)
            reason += f"; missing {', '.join(check.missing) or 'paragraphs'}"
        decision = "enough" if check.enough else "stalled" if stalled else "more"
        update["trace"] = [event(state, "check_evidence", decision, started, reason=reason,
                                 scores={"coverage": check.coverage},
                                 detail={"next_query": update.get("query"),
                                         "sources_seen": sources, "stalled": stalled})]
        return update

    def read_first(self, state: AgentState, runtime: Runtime[Context]) -> dict[str, Any]:
        """Answer from the question's own top-k paragraphs; keep it if the reader is confident.

        The paragraphs are the first k that `retrieve_links` kept for the whole question (what a
        single retrieval returns). An answer below `read_first_confidence`, or from a model that
        reports no confidence, is set aside and the question is decomposed (its paragraphs stay),
        and so is one that does not fit the question (a comparison's answer that names neither
        candidate, a yes/no question's answer that is neither).
        """
        from ragtune.agents.answerer import answer_from_documents
        from ragtune.agents.composition import fit_answer, question_shape
        from ragtune.agents.specialist_model import describe_model

        started = time.perf_counter()
        ctx = context_of(runtime)
        threshold = ctx.read_first_confidence
        docs = state.get("documents", [])[:ctx.k]
        model = self.resources.reader_model(ctx)
        result = answer_from_documents(state["question"], docs, model, prompt=ctx.answer_prompt,
                                       max_tokens=ctx.max_answer_tokens)
        confidence = result.confidence
        fitted = fit_answer(question_shape(state["question"]), result.text)
        accepted = fitted is not None and confidence is not None and confidence >= threshold
        shown = "unknown" if confidence is None else f"{confidence:.2f}"
        unfit = "" if fitted is not None or not result.text else \
            f"; {result.text!r} does not fit the question"
        return {
            "draft": {"answer": fitted or result.text, "confidence": confidence,
                      "accepted": accepted, "citations": citations_of(result.citations)},
            "steps": 1, "usage": result.usage,
            "trace": [event(state, "read_first", "answer" if accepted else "decompose", started,
                            reason=f"reader confidence {shown} vs threshold {threshold} "
                                   f"({describe_model(model)}, {len(docs)} paragraphs){unfit}",
                            scores={"confidence": confidence} if confidence is not None else {},
                            detail={"answer": result.text})],
        }

    def decompose(self, state: AgentState, runtime: Runtime[Context]) -> dict[str, Any]:
        """Split the question into sub-questions (later ones may use `#n` references)."""
        from ragtune.agents.decomposer import decompose_question
        from ragtune.agents.specialist_model import describe_model

        started = time.perf_counter()
        ctx = context_of(runtime)
        model = self.resources.decomposer_model(ctx)
        result = decompose_question(state["question"], model,
                                         prompt=ctx.decompose_prompt, max_hops=ctx.max_hops)
        plan = [SubQuestion(index=i, question=q, depends_on=deps)
                for i, (q, deps) in enumerate(zip(result.sub_questions, result.dependencies,
                                                  strict=True), 1)]
        return {
            "sub_questions": plan, "steps": 1,
            "trace": [event(state, "decompose", f"{len(plan)} sub-questions", started,
                            reason=f"{result.reason} ({describe_model(model)})",
                            detail={"sub_questions": result.sub_questions,
                                    "fallback": result.fallback})],
        }

    def solve(self, state: SolveState, runtime: Runtime[Context]) -> dict[str, Any]:
        """Answer one sub-question: route it (retrieve or specialist), then run that route."""
        from ragtune.agents.answerer import answer_from_documents
        from ragtune.agents.specialist import ask_specialist
        from ragtune.tools.distinct import retrieve_sources

        started = time.perf_counter()
        ctx = context_of(runtime)
        question = state["question"]
        router = self.resources.router(ctx)
        decision = router.route(question,
                                           allowed=("retrieve", "specialist"))
        docs: list[Document] = []
        cited: list[Document] = []
        retrievals = 0
        if decision.action == "specialist":
            model = self.resources.specialist_model(ctx)
            reply = ask_specialist(question, model,
                                            prompt=ctx.specialist_prompt,
                                            max_tokens=ctx.max_answer_tokens)
            text, usage = reply.text, reply.usage
        else:
            store = self.resources.store(ctx)
            hits = retrieve_sources(store, question, ctx.k, mode=ctx.search_mode)
            docs, retrievals = [h.to_document() for h in hits], 1
            model = self.resources.reader_model(ctx)
            result = answer_from_documents(question, docs, model,
                                             prompt=ctx.answer_prompt,
                                             max_tokens=ctx.max_answer_tokens)
            text, usage, cited = result.text, result.usage, result.citations
        sub_answer = {"index": state["index"], "question": question, "answer": text,
                      "route": decision.action, "document_ids": [str(d.id) for d in docs],
                      "cited_ids": [str(d.id) for d in cited]}
        return {
            "sub_answers": [sub_answer], "documents": docs, "retrievals": retrievals,
            "steps": 1, "usage": usage,
            "trace": [event(state, f"solve #{state['index']}", decision.action, started,
                            policy=decision.policy, reason=decision.reason,
                            scores=decision.scores,
                            detail={"question": question, "answer": text})],
        }

    def specialist(self, state: AgentState, runtime: Runtime[Context]) -> dict[str, Any]:
        """Ask the specialist model (no retrieval)."""
        from ragtune.agents.specialist import ask_specialist

        started = time.perf_counter()
        ctx = context_of(runtime)
        model = self.resources.specialist_model(ctx)
        adapter = state.get("specialist_adapter")
        reply = ask_specialist(state["question"], model,
                                        prompt=ctx.specialist_prompt,
                                        max_tokens=ctx.max_answer_tokens, adapter=adapter)
        return {
            "specialist_answer": reply.text, "steps": 1, "usage": reply.usage,
            "trace": [event(state, "specialist", "answered", started,
                            reason=f"model {ctx.specialist_model}"
                                   + (f", adapter {adapter}" if adapter else ""),
                            detail={"answer": reply.text})],
        }

    def answer(self, state: AgentState, runtime: Runtime[Context]) -> dict[str, Any]:
        """Write the final short answer with citations, from whatever the run gathered.

        A decomposed question's answer comes from its hops (`ragtune.agents.chain`) and cites
        every hop's paragraphs; any answer is fitted to the question's shape (a comparison names
        one of its candidates, a yes/no question says yes or no).
        """
        from ragtune.agents.answerer import AnswerResult, answer_from_documents
        from ragtune.agents.chain import answer_from_hops
        from ragtune.agents.composition import fit_or_choose, question_shape
        from ragtune.agents.specialist_model import describe_model

        started = time.perf_counter()
        ctx = context_of(runtime)
        docs = state.get("documents", [])
        sub_answers = state.get("sub_answers", [])
        planned = len(state.get("sub_questions", []))
        # Work left undone means a budget stopped the run: sub-questions never run, or evidence
        # still short when retrieval had to stop.
        exhausted = planned > len(sub_answers) or state.get("evidence_ok") is False
        draft = state.get("draft")
        if state.get("specialist_answer") is not None:
            result = AnswerResult(state["specialist_answer"])
            how = "specialist answer"
        elif draft is not None and draft["accepted"]:
            cited = {c["id"] for c in draft["citations"]}
            result = AnswerResult(draft["answer"], [d for d in docs if str(d.id) in cited])
            how = f"read-first answer (confidence {draft['confidence']:.2f})"
        elif sub_answers:
            model = self.resources.reader_model(ctx)
            per_hop = {i for a in sub_answers for i in a.get("document_ids", [])}
            # Paragraphs retrieved for the whole question (retrieve_links) count as a first hop.
            whole = [str(d.id) for d in docs if str(d.id) not in per_hop]
            plan = state.get("sub_questions", [])
            is_chain = len(plan) == 1 or bool(plan and plan[-1]["depends_on"])
            chained = answer_from_hops(state["question"], sub_answers, docs, model,
                                       whole_ids=whole, is_chain=is_chain, limit=ctx.k + 1,
                                       max_tokens=ctx.max_answer_tokens,
                                       answer_prompt=ctx.answer_prompt)
            result = chained.result
            how = f"{chained.how} ({describe_model(model)})"
        elif docs:
            model = self.resources.reader_model(ctx)
            result = answer_from_documents(state["question"], docs,
                                             model, prompt=ctx.answer_prompt,
                                             max_tokens=ctx.max_answer_tokens)
            how = f"answered from {len(docs)} paragraphs by {describe_model(model)}"
        else:
            result = AnswerResult("")
            how = "nothing to answer from"
        shape = question_shape(state["question"])
        if shape.kind != "open":
            facts = [(a["question"], a["answer"]) for a in sub_answers]
            fitted = fit_or_choose(shape, result.text, facts)
            if fitted.answer != result.text:
                how += f"; {fitted.reason}"
                result = dataclasses.replace(result, text=fitted.answer)
        reason = how + ("; a budget ran out, answering with what was gathered"
                        if exhausted else "")
        return {
            "answer": result.text, "citations": citations_of(result.citations),
            "retrieved": citations_of(docs),
            "exhausted": exhausted, "steps": 1, "usage": result.usage,
            "history": [Turn(question=state["question"], answer=result.text)],
            "trace": [event(state, "answer", "answered", started, reason=reason,
                            detail={"answer": result.text})],
        }
