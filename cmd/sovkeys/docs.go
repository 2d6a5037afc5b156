package main

import (
	"flag"
	"fmt"
	"sort"
	"strings"
)

// readmeTables renders the README's command and configuration tables from
// the command table (between <!-- flags:begin --> and <!-- flags:end -->).
func readmeTables(cmds []command) string {
	var b strings.Builder
	getenv := func(string) string { return "" } // defaults as documented, not as this shell's environment
	b.WriteString("### Commands\n\n| command | what |\n| --- | --- |\n")
	for _, g := range []string{groupService, groupOperator} {
		for _, c := range cmds {
			if c.Group == g {
				fmt.Fprintf(&b, "| `%s` | %s |\n", cell(strings.TrimSpace("sovkeys "+c.Name+" "+c.Usage)), cell(c.Short))
			}
		}
	}
	b.WriteString("\n`sovkeys help COMMAND` prints a command's flags; unknown flags are refused.\n")

	common := commonFlagNames()
	flagsOf := func(name string) *flag.FlagSet {
		for _, c := range cmds {
			if c.Name == name {
				fs, _ := c.flagSet(getenv, nil)
				return fs
			}
		}
		panic("no command " + name)
	}
	b.WriteString("\n### Configuration\n\nEvery service (gateway, authn, keyworker, audit) takes these flags:\n\n")
	writeFlags(&b, flagsOf("gateway"), func(f *flag.Flag) bool { return common[f.Name] })
	for _, svc := range services() {
		fmt.Fprintf(&b, "\n`sovkeys %s` also takes:\n\n", svc.name)
		writeFlags(&b, flagsOf(svc.name), func(f *flag.Flag) bool { return !common[f.Name] })
	}
	sets := []string{}
	for n := range standaloneSets() {
		sets = append(sets, "`--"+n+"`")
	}
	sort.Strings(sets)
	fmt.Fprintf(&b, "\n`sovkeys standalone` takes every service's flags except %s (it sets those itself), and:\n\n", strings.Join(sets, ", "))
	all := map[string]bool{}
	for _, svc := range services() {
		flagsOf(svc.name).VisitAll(func(f *flag.Flag) { all[f.Name] = true })
	}
	writeFlags(&b, flagsOf("standalone"), func(f *flag.Flag) bool { return !all[f.Name] })
	b.WriteString("\nFrom the environment only:\n\n| variable | meaning |\n| --- | --- |\n")
	for _, e := range environment() {
		fmt.Fprintf(&b, "| `%s` | %s |\n", cell(e.name), cell(e.meaning))
	}
	return b.String()
}

func writeFlags(b *strings.Builder, fs *flag.FlagSet, keep func(*flag.Flag) bool) {
	b.WriteString("| flag | default | meaning |\n| --- | --- | --- |\n")
	fs.VisitAll(func(f *flag.Flag) {
		if !keep(f) {
			return
		}
		def := ""
		if f.DefValue != "" {
			def = "`" + f.DefValue + "`"
		}
		fmt.Fprintf(b, "| `--%s` | %s | %s |\n", f.Name, def, cell(f.Usage))
	})
}

// cell escapes a markdown table cell.
func cell(s string) string { return strings.ReplaceAll(s, "|", `\|`) }
