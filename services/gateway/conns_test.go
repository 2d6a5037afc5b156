package gateway

import (
	"net"
	"testing"
	"time"
)

// TestConnectionBounds: past the rate an accept waits for the next token
// (the injected clock and sleep: nothing here depends on the machine's
// speed); past the open-connection bound it waits for a close.
func TestConnectionBounds(t *testing.T) {
	c := &fakeClock{t: time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)}
	var slept []time.Duration
	l := limitConns(nil, 3, 2, c.now).(*limitListener)
	l.sleep = func(d time.Duration) { slept = append(slept, d); c.advance(d) }
	for range 3 { // a burst of two, then one token every 500 ms
		if !l.wait() {
			t.Fatal("wait refused")
		}
	}
	if len(slept) != 1 || slept[0] != 500*time.Millisecond {
		t.Fatalf("slept %v, want one 500ms wait (2 per second)", slept)
	}
	// Three open: the fourth waits until one closes.
	got := make(chan bool, 1)
	go func() { got <- l.wait() }()
	select {
	case <-got:
		t.Fatal("a fourth connection was let in while three are open")
	case <-time.After(20 * time.Millisecond): // proves nothing when it passes; a failure is a real bug
	}
	server, client := net.Pipe()
	defer client.Close()
	cc := &countedConn{Conn: server, l: l}
	_ = cc.Close()
	_ = cc.Close() // twice frees one place only
	if !<-got {
		t.Fatal("wait refused after a close")
	}
	if n := len(l.slots); n != 3 {
		t.Fatalf("%d places taken, want 3", n)
	}
	// Closing the listener releases a waiting accept.
	go func() { got <- l.wait() }()
	l.once.Do(func() { close(l.done) })
	if <-got {
		t.Fatal("wait after close let a connection in")
	}
}
