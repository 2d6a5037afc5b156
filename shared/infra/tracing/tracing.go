// Package tracing sets up OpenTelemetry for a sovkeys service and carries W3C
// trace context in NATS headers (lowercase "traceparent").
package tracing

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/sovkeys/sovkeys/shared"
)

// Setup returns a tracer provider for service. Spans always get trace ids
// (so they reach logs, audit events and the next service's traceparent);
// they are recorded and exported over OTLP/gRPC only when
// OTEL_EXPORTER_OTLP_ENDPOINT is set. Without an exporter every span is a
// non-recording one: recording spans nobody exports cost ~3 % of a node's
// CPU per XKS call (docs/BENCHMARKS.md). getenv is injected.
func Setup(ctx context.Context, service string, getenv func(string) string) (*sdktrace.TracerProvider, error) {
	res := resource.NewSchemaless(semconv.ServiceName(service), semconv.ServiceNamespace("sovkeys"))
	opts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	if getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" {
		return sdktrace.NewTracerProvider(append(opts, sdktrace.WithSampler(sdktrace.NeverSample()))...), nil
	}
	exp, err := otlptracegrpc.New(ctx) // reads the standard OTEL_* variables
	if err != nil {
		return nil, fmt.Errorf("tracing: otlp exporter: %w", err)
	}
	return sdktrace.NewTracerProvider(append(opts, sdktrace.WithBatcher(exp))...), nil
}

var propagator = propagation.TraceContext{}

// headerCarrier adapts nats.Header without canonicalising keys, so the
// header on the wire is the lowercase "traceparent" of W3C trace context.
type headerCarrier nats.Header

func (h headerCarrier) Get(key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func (h headerCarrier) Set(key, value string) { h[key] = []string{value} }

func (h headerCarrier) Keys() []string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	return keys
}

// Inject writes the span context of ctx into h.
func Inject(ctx context.Context, h nats.Header) {
	if h == nil {
		return
	}
	propagator.Inject(ctx, headerCarrier(h))
}

// Extract returns ctx carrying the remote span context found in h.
func Extract(ctx context.Context, h nats.Header) context.Context {
	if h == nil {
		return ctx
	}
	return propagator.Extract(ctx, headerCarrier(h))
}

// Received records a consumer span, ended at once, for a message that
// carries trace context in h: the receiving service then appears in the
// sender's trace even when its real work is batched across many messages.
// The span carries the message id header only, never the payload.
func Received(ctx context.Context, tracer trace.Tracer, name string, h nats.Header) {
	if h == nil || h.Get("traceparent") == "" {
		return
	}
	_, span := tracer.Start(Extract(ctx, h), name, trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attribute.String("messaging.message.id", h.Get(shared.HeaderMsgID))))
	span.End()
}

// TraceID returns the trace id of the span in ctx, or "".
func TraceID(ctx context.Context) string {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.HasTraceID() {
		return ""
	}
	return sc.TraceID().String()
}
