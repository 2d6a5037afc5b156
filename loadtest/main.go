// Command loadtest drives SigV4-signed XKS encrypt and decrypt requests
// against a running sovkeys gateway, as AWS KMS would, or (-api vs)
// volume-secret generate-secret and decrypt-secret calls over mutual TLS, as
// booting instances would, and reports throughput, latency percentiles and
// errors by class; or (-api audit) publishes audit events over NATS, as the
// services do, and reports how fast the audit services number and export them.
//
// Closed loop (a fixed number of callers, each sending its next request when
// the previous one answers):
//
//	go run ./loadtest -ca DATA/tls/ca.pem -creds-json ks.json -key k1 -concurrency 32 -duration 60s
//
// Open loop (a fixed arrival rate; latency counts from each request's
// intended send time, so a stalled server cannot hide behind a slowed-down
// generator — no coordinated omission):
//
//	go run ./loadtest -ca DATA/tls/ca.pem -creds-json ks.json -key k1 -rate 1800 -duration 60s
//
// Volume secrets, as the instance of `sovkeys instance issue-cert --out DIR`
// (every signature verified, every secret unwrapped; the one-time RSA
// wrapping keys are made before the run and rotated through):
//
//	go run ./loadtest -api vs -ca DATA/tls/ca.pem -cert DIR/cert.pem -key DIR/key.pem \
//	    -signing-key DIR/signing-key.pem -instance i-0123 -op decrypt -rate 100 -duration 30s
//
// Audit events, 5,000/s for a minute over 200 key stores (NATS from -nats,
// -nats-creds, -nats-ca or SOVKEYS_NATS_URL, SOVKEYS_NATS_CREDS, SOVKEYS_NATS_CA):
//
//	go run ./loadtest -api audit -rate 5000 -scopes 200 -duration 60s
//
// The floor, a bare XKS server (the gateway's TLS, authn's SigV4 check,
// software AES-GCM; no mesh, no HSM, no audit) to measure sovkeys against in
// the same run (floor.go):
//
//	go run ./loadtest floor -listen 127.0.0.1:18444 -cert DATA/tls/cert.pem -key DATA/tls/key.pem -creds-json ks.json
//
// Many XKS keys at once, as `sovkeys xks key create` makes them one by one
// (the key-count benchmark, keys-scale.sh; keys.go):
//
//	go run ./loadtest keys -keystore /scale -from 1 -count 9999 -jobs 4
//
// Runs are bounded in time and count and refuse non-loopback targets unless
// -allow-remote is given.
package main

import (
	"context"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// LOADTEST_CPUPROFILE=FILE profiles the generator itself (its cost per
	// request is part of every figure on a shared machine).
	if f := os.Getenv("LOADTEST_CPUPROFILE"); f != "" {
		if out, err := os.Create(f); err == nil {
			_ = pprof.StartCPUProfile(out)
			defer out.Close()
		}
	}
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	pprof.StopCPUProfile()
	stop()
	os.Exit(code)
}
