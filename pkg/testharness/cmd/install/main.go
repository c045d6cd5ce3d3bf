// Command install installs and downloads everything the Plume test harness
// needs (see testharness.Install). Usage: go run ./pkg/testharness/cmd/install [component...]
// with components postgres, mariadb, kafka, kcat (default: all).
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/plumecdc/plume/pkg/testharness"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	comps := os.Args[1:]
	if len(comps) == 0 {
		comps = testharness.AllComponents
	}
	start := time.Now()
	if err := testharness.Install(ctx, comps...); err != nil {
		fmt.Fprintln(os.Stderr, "install:", err)
		os.Exit(1)
	}
	cache, _ := testharness.CacheDir()
	fmt.Printf("test dependencies ready (%v; cache %s): %v\n", time.Since(start).Round(time.Millisecond), cache, comps)
}
