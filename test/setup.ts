/**
 * Loaded before every test file (`node --import ./test/setup.ts`): any uncaught exception or
 * unhandled rejection fails the run, even one that escapes after the tests finished.
 */
process.on('unhandledRejection', (reason) => {
  console.error('unhandledRejection:', reason);
  process.exitCode = 1;
});
process.on('uncaughtException', (error) => {
  console.error('uncaughtException:', error);
  process.exitCode = 1;
});
