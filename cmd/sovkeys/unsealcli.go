package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/unseal"
)

// runUnseal submits PIN shares for a sealed keyworker pool, or (split)
// makes shares of a PIN read from standard input.
func runUnseal(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "split" {
		fs := flag.NewFlagSet("unseal split", flag.ContinueOnError)
		fs.SetOutput(stderr)
		pool := fs.String("pool", "default", "keyworker pool")
		n := fs.Int("shares", 3, "shares to make")
		k := fs.Int("threshold", 2, "shares needed to unseal")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		line, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && err != io.EOF {
			return err
		}
		pin := strings.TrimRight(line, "\r\n")
		if pin == "" {
			return fmt.Errorf("%w: give the HSM user PIN on standard input", shared.ErrConfigValidation)
		}
		shares, err := unseal.SplitPIN(pin, *pool, *n, *k)
		if err != nil {
			return fmt.Errorf("%w: %v", shared.ErrConfigValidation, err)
		}
		printShares(stdout, shares, *k)
		return nil
	}
	var lines listFlag
	return withOperator(ctx, "unseal", args, getenv, stdout, stderr, func(fs *flag.FlagSet) {
		fs.Var(&lines, "share", "a share line (repeatable); without --share, one share per line on standard input")
	}, func(ctx context.Context, o *operator) error {
		if len(lines) == 0 {
			sc := bufio.NewScanner(stdin)
			for sc.Scan() {
				if l := strings.TrimSpace(sc.Text()); l != "" {
					lines = append(lines, l)
				}
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
	})
}
