package tracing

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go"
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
