//go:build race

package main

// With -race, the bridge under test is built with -race as well.
func init() { raceEnabled = true }
