package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/unseal"
)

// splitFlags are the flags of `unseal split`.
type splitFlags struct {
	pool string
	n, k int
}

// unsealFlags are the flags of `unseal`.
type unsealFlags struct {
	lines, keys listFlag
}

func unsealCommands() []command {
	return []command{
		operatorCommand("unseal", "[--keyworker-key FINGERPRINT]... [--share SHARE]...",
			"encrypt HSM PIN shares to the sealed keyworkers of their pool and submit them (one per line on stdin without --share)",
			func(f *unsealFlags, fs *flag.FlagSet) {
				fs.Var(&f.lines, "share", "a share line (repeatable); without --share, one share per line on standard input")
				fs.Var(&f.keys, "keyworker-key", "encrypt only to the sealed keyworker whose key has this fingerprint (from its log or `unseal status`; repeatable); refused if none has it")
			}, func(ctx context.Context, o *operator, f *unsealFlags) error { return o.unseal(ctx, f.lines, f.keys) }),
		operatorCommand("unseal status", "[--pool P]", "list the sealed keyworkers of a pool (key fingerprints, state) and its failed-login budget",
			func(pool *string, fs *flag.FlagSet) {
				fs.StringVar(pool, "pool", "default", "keyworker pool")
			}, func(ctx context.Context, o *operator, pool *string) error { return o.unsealStatus(ctx, *pool) }),
		define("unseal split", "--pool P --shares N --threshold K", "make Shamir shares of an HSM PIN read from stdin", groupOperator,
			func(fs *flag.FlagSet, _ func(string) string, f *splitFlags) {
				fs.StringVar(&f.pool, "pool", "default", "keyworker pool")
				fs.IntVar(&f.n, "shares", 3, "shares to make")
				fs.IntVar(&f.k, "threshold", 2, "shares needed to unseal")
			}, unsealSplit),
	}
}

func unsealSplit(_ context.Context, f *splitFlags, s stdio) error {
	line, err := bufio.NewReader(s.stdin).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	pin := strings.TrimRight(line, "\r\n")
	if pin == "" {
		return fmt.Errorf("%w: give the HSM user PIN on standard input", shared.ErrConfigValidation)
	}
	shares, err := unseal.SplitPIN(pin, f.pool, f.n, f.k)
	if err != nil {
		return fmt.Errorf("%w: %v", shared.ErrConfigValidation, err)
	}
	printShares(s.stdout, shares, f.k)
	return nil
}

// unseal checks every share first (nothing is submitted when one is
// malformed or they mix splits), then encrypts each to the chosen sealed
// keyworkers of its pool and stores only the ciphertext.
func (o *operator) unseal(ctx context.Context, lines, pins []string) error {
	if len(lines) == 0 {
		sc := bufio.NewScanner(o.stdin)
		for sc.Scan() {
			if l := strings.TrimSpace(sc.Text()); l != "" {
				lines = append(lines, l)
			}
		}
		if err := sc.Err(); err != nil {
			return fmt.Errorf("reading shares: %w", err)
		}
	}
	if len(lines) == 0 {
		return fmt.Errorf("%w: no share given", shared.ErrConfigValidation)
	}
	byPool := map[string][]unseal.Share{}
	var pools []string
	for _, l := range lines {
		s, err := unseal.Parse(l)
		if err != nil {
			return fmt.Errorf("%w; nothing submitted", err)
		}
		if byPool[s.Pool] == nil {
			pools = append(pools, s.Pool)
		}
		byPool[s.Pool] = append(byPool[s.Pool], s)
	}
	kv, err := unseal.Open(ctx, o.js, o.topo)
	if err != nil {
		return err
	}
	targets := map[string][]unseal.KeyRecord{}
	for _, pool := range pools {
		if err := unseal.SameSplit(byPool[pool]); err != nil {
			return fmt.Errorf("%w; nothing submitted", err)
		}
		recs, err := unseal.PublishedKeys(ctx, kv, pool)
		if err != nil {
			return err
		}
		if targets[pool], err = unseal.Recipients(pool, recs, pins); err != nil {
			return err
		}
		for _, r := range targets[pool] {
			if r.State == unseal.StateLocked && r.LockedUntil.After(time.Now()) {
				return fmt.Errorf("pool %q is locked after too many failed HSM logins: keyworker %s tries no login before %s; nothing submitted",
					pool, r.Keyworker, r.LockedUntil.UTC().Format(time.RFC3339))
			}
		}
	}
	for _, pool := range pools {
		for _, s := range byPool[pool] {
			for _, rec := range targets[pool] {
				params := map[string]string{"pool": pool, "share_index": strconv.Itoa(int(s.Share.X)), "keyworker": rec.Keyworker, "keyworker_key": rec.Fingerprint}
				if err := o.audited(ctx, "unseal.submit", params, func() error { return unseal.Submit(ctx, kv, s, rec) }); err != nil {
					return err
				}
				fmt.Fprintf(o.out, "share %d of pool %q encrypted to keyworker %s (key %s) and submitted (%d needed)\n",
					s.Share.X, pool, rec.Keyworker, rec.Fingerprint, s.Threshold)
			}
		}
	}
	if len(pins) == 0 {
		fmt.Fprintln(o.errOut, "note: without --keyworker-key the shares went to every key published for the pool; pin the fingerprint the keyworker logs to be sure only it can read them")
	}
	return nil
}

// unsealStatus prints the sealed keyworkers of pool and its login budget.
func (o *operator) unsealStatus(ctx context.Context, pool string) error {
	kv, err := unseal.Open(ctx, o.js, o.topo)
	if err != nil {
		return err
	}
	recs, err := unseal.PublishedKeys(ctx, kv, pool)
	if err != nil {
		return err
	}
	st, err := unseal.ReadLoginState(ctx, kv, pool, time.Now)
	if err != nil {
		return err
	}
	type keyworkerStatus struct {
		Keyworker   string    `json:"keyworker"`
		Fingerprint string    `json:"key_fingerprint"`
		State       string    `json:"state"`
		Detail      string    `json:"detail,omitempty"`
		Updated     time.Time `json:"updated"`
	}
	out := struct {
		Pool         string            `json:"pool"`
		Sealed       []keyworkerStatus `json:"sealed_keyworkers"`
		FailedLogins int               `json:"failed_logins_last_hour"`
		OldestExpiry *time.Time        `json:"oldest_failure_expires,omitempty"`
	}{Pool: pool, Sealed: []keyworkerStatus{}, FailedLogins: st.Failed}
	if !st.Until.IsZero() {
		out.OldestExpiry = &st.Until
	}
	for _, r := range recs {
		out.Sealed = append(out.Sealed, keyworkerStatus{r.Keyworker, r.Fingerprint, r.State, r.Detail, r.Updated})
	}
	return o.print(out)
}
