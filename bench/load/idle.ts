/** Idle connections (memory case): the clients connect and then do nothing. */
import type { GeneratorFactory } from './generator.ts';

export const idle: GeneratorFactory = () => ({ start() {}, stop: async () => {} });
