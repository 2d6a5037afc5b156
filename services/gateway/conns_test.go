package gateway

import (
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/shared/infra/mesh"
)

// TestConnectionBounds: past the rate or the open-connection bound a
// connection is refused; the rate refills with the injected clock.
func TestConnectionBounds(t *testing.T) {
	c := &fakeClock{t: time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)}
	refusals := mesh.NewRefusalLog("gateway", slog.New(slog.DiscardHandler), c.now, 0)
	l := limitConns(nil, 3, 2, c.now, refusals).(*limitListener)
	for i := range 2 { // the burst: one second's worth
		if ok, why := l.admit(); !ok {
			t.Fatalf("connection %d refused: %s", i, why)
		}
		l.open.Add(1)
	}
	if ok, why := l.admit(); ok || why != "new connection rate exceeded" {
		t.Fatalf("third connection at once: %v %q, want refused for rate", ok, why)
	}
	c.advance(500 * time.Millisecond) // one token back
	if ok, _ := l.admit(); !ok {
		t.Fatal("connection after the rate refilled refused")
	}
	l.open.Add(1)
	c.advance(10 * time.Second)
	if ok, why := l.admit(); ok || why != "too many open connections" {
		t.Fatalf("fourth open connection: %v %q, want refused for the bound", ok, why)
	}
	// Closing a connection (twice) frees one place.
	server, client := net.Pipe()
	defer client.Close()
	cc := &countedConn{Conn: server, l: l}
	_ = cc.Close()
	_ = cc.Close()
	if got := l.open.Load(); got != 2 {
		t.Fatalf("open after one close: %d, want 2", got)
	}
}
