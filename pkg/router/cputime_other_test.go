//go:build !unix

package router

import "time"

func processCPU() time.Duration { return 0 }
