package tracing

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

func TestTraceContextTravelsInLowercaseHeader(t *testing.T) {
	t.Parallel()
	tp, err := Setup(context.Background(), "test", func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tp.Shutdown(context.Background()) }()
	ctx, span := tp.Tracer("t").Start(context.Background(), "parent")
	defer span.End()
	h := nats.Header{}
	Inject(ctx, h)
	if len(h["traceparent"]) != 1 {
		t.Fatalf("header %v lacks lowercase traceparent", h)
	}
	got := Extract(context.Background(), h)
	if TraceID(got) != TraceID(ctx) || TraceID(got) == "" {
		t.Fatalf("trace id %q, want %q", TraceID(got), TraceID(ctx))
	}
}

func TestReceivedJoinsTheSendersTrace(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	ctx, parent := tp.Tracer("t").Start(context.Background(), "keyworker")
	h := nats.Header{}
	Inject(ctx, h)
	h.Set("Nats-Msg-Id", "keyworker:abc")
	parent.End()

	Received(context.Background(), tp.Tracer("t"), "audit receive", h)
	Received(context.Background(), tp.Tracer("t"), "no context", nats.Header{}) // nothing to join: no span
	spans := rec.Ended()
	if len(spans) != 2 {
		t.Fatalf("%d spans ended, want 2 (parent and one receive)", len(spans))
	}
	got := spans[1]
	if got.Name() != "audit receive" || got.Parent().SpanID() != parent.SpanContext().SpanID() ||
		got.SpanContext().TraceID() != parent.SpanContext().TraceID() {
		t.Fatalf("receive span %q parent %s trace %s; want child of %s", got.Name(), got.Parent().SpanID(),
			got.SpanContext().TraceID(), parent.SpanContext().SpanID())
	}
}
