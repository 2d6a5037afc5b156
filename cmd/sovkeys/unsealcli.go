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

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/unseal"
)

// splitFlags are the flags of `unseal split`.
type splitFlags struct {
	pool string
	n, k int
}

func unsealCommands() []command {
	return []command{
		operatorCommand("unseal", "[--share SHARE]...", "give a sealed keyworker pool its HSM PIN shares (one per line on stdin without --share)",
			func(lines *listFlag, fs *flag.FlagSet) {
				fs.Var(lines, "share", "a share line (repeatable); without --share, one share per line on standard input")
			}, func(ctx context.Context, o *operator, lines *listFlag) error { return o.unseal(ctx, *lines) }),
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

func (o *operator) unseal(ctx context.Context, lines []string) error {
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
	kv, err := unseal.Open(ctx, o.js, o.topo)
	if err != nil {
		return err
	}
	for _, l := range lines {
		s, err := unseal.Parse(l)
		if err != nil {
			return err
		}
		params := map[string]string{"pool": s.Pool, "share_index": strconv.Itoa(int(s.Share.X))}
		if err := o.audited(ctx, "unseal.submit", params, func() error { return unseal.Submit(ctx, kv, s) }); err != nil {
			return err
		}
		fmt.Fprintf(o.out, "share %d of pool %q submitted (%d needed)\n", s.Share.X, s.Pool, s.Threshold)
	}
	return nil
}
