package main

// The mesh's floor figure: what one JetStream hop costs on this machine,
// without HTTP, SigV4 or an HSM. Every XKS request makes at least one such
// hop (gateway -> authn -> keyworker make two, plus the audit publish), so
// the end-to-end rate cannot beat this one.
//
//	go test ./loadtest -run '^$' -bench 'JetStreamRoundTrip|CoreRequestReply' -benchtime 5s

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

// benchParallelism * GOMAXPROCS requests are outstanding at once, like the
// gateway's concurrent HTTP handlers.
const benchParallelism = 16

// benchServer is an embedded JetStream server on a free loopback port.
func benchServer(b *testing.B) *server.Server { return natstest.Start(b, nil) }

func benchConn(b *testing.B, ns *server.Server, name string) *nats.Conn {
	b.Helper()
	nc, err := nats.Connect(ns.ClientURL(), nats.Name(name))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	return nc
}

// benchMux routes replies arriving on one subscription to their waiters by
// request id, as services/gateway/mux.go does.
type benchMux struct {
	mu      sync.Mutex
	pending map[string]chan *nats.Msg
}

func (m *benchMux) register(id string) chan *nats.Msg {
	ch := make(chan *nats.Msg, 1)
	m.mu.Lock()
	m.pending[id] = ch
	m.mu.Unlock()
	return ch
}

func (m *benchMux) deliver(msg *nats.Msg) {
	id := msg.Header.Get(benchHeaderID)
	m.mu.Lock()
	ch, ok := m.pending[id]
	delete(m.pending, id)
	m.mu.Unlock()
	if ok {
		ch <- msg
	}
}

const (
	benchHeaderID    = "Sovkeys-Request-Id"
	benchHeaderReply = "Bench-Reply-To"
	benchReplySubj   = "bench.reply.gw1"
	benchPayloadSize = 512 // about an envelope with a 1 KiB-plaintext XKS request's worth of fields
)

// BenchmarkJetStreamRoundTrip: publish (awaiting the PubAck, with
// Nats-Msg-Id) to a memory work-queue stream -> a durable pull consumer on
// another connection -> core NATS reply to ONE reply-mux subscription.
func BenchmarkJetStreamRoundTrip(b *testing.B) {
	ns := benchServer(b)
	gw, worker := benchConn(b, ns, "bench-gateway"), benchConn(b, ns, "bench-worker")
	ctx := b.Context()
	gwJS, err := jetstream.New(gw)
	if err != nil {
		b.Fatal(err)
	}
	wJS, err := jetstream.New(worker)
	if err != nil {
		b.Fatal(err)
	}
	stream, err := gwJS.CreateStream(ctx, jetstream.StreamConfig{
		Name: "BENCH_WORK", Subjects: []string{"bench.work.>"}, Retention: jetstream.WorkQueuePolicy,
		Storage: jetstream.MemoryStorage, MaxMsgs: 100_000, Discard: jetstream.DiscardNew,
	})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable: "worker", AckPolicy: jetstream.AckExplicitPolicy, AckWait: 10 * time.Second, MaxAckPending: 1024,
	}); err != nil {
		b.Fatal(err)
	}
	cons, err := wJS.Consumer(ctx, "BENCH_WORK", "worker")
	if err != nil {
		b.Fatal(err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		h := m.Headers()
		reply := nats.NewMsg(h.Get(benchHeaderReply))
		reply.Header.Set(benchHeaderID, h.Get(benchHeaderID))
		reply.Data = m.Data()
		if err := worker.PublishMsg(reply); err != nil {
			b.Error(err)
		}
		_ = m.Ack()
	}, jetstream.PullMaxMessages(256))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(cc.Stop)

	mux := &benchMux{pending: map[string]chan *nats.Msg{}}
	sub, err := gw.Subscribe(benchReplySubj, mux.deliver)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = sub.Unsubscribe() })
	sub.SetPendingLimits(-1, -1)

	payload := make([]byte, benchPayloadSize)
	var next atomic.Uint64
	roundTrip := func(ctx context.Context) error {
		id := "r" + strconv.FormatUint(next.Add(1), 36)
		msg := nats.NewMsg("bench.work.encrypt")
		msg.Header.Set(benchHeaderID, id)
		msg.Header.Set(jetstream.MsgIDHeader, id)
		msg.Header.Set(benchHeaderReply, benchReplySubj)
		msg.Data = payload
		ch := mux.register(id)
		if _, err := gwJS.PublishMsg(ctx, msg); err != nil {
			return err
		}
		select {
		case <-ch:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	runParallel(b, roundTrip)
}

// BenchmarkCoreRequestReply: core NATS request-reply (nats.go's shared
// response subscription) to a queue-group responder, for comparison.
func BenchmarkCoreRequestReply(b *testing.B) {
	ns := benchServer(b)
	gw, worker := benchConn(b, ns, "bench-gateway"), benchConn(b, ns, "bench-worker")
	sub, err := worker.QueueSubscribe("bench.core", "workers", func(m *nats.Msg) { _ = m.Respond(m.Data) })
	if err != nil {
		b.Fatal(err)
	}
	sub.SetPendingLimits(-1, -1)
	b.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := worker.Flush(); err != nil {
		b.Fatal(err)
	}
	payload := make([]byte, benchPayloadSize)
	runParallel(b, func(ctx context.Context) error {
		_, err := gw.RequestWithContext(ctx, "bench.core", payload)
		return err
	})
}

// runParallel runs op from benchParallelism*GOMAXPROCS goroutines and
// reports ops/s and latency quantiles.
func runParallel(b *testing.B, op func(ctx context.Context) error) {
	var lat histogram
	b.SetParallelism(benchParallelism)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			ctx, cancel := context.WithTimeout(b.Context(), 10*time.Second)
			start := time.Now()
			err := op(ctx)
			cancel()
			if err != nil {
				b.Error(err)
				return
			}
			lat.Record(time.Since(start))
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
	b.ReportMetric(ms(lat.Quantile(0.5)), "p50-ms")
	b.ReportMetric(ms(lat.Quantile(0.99)), "p99-ms")
}
