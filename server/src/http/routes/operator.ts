import { createRoute } from '@hono/zod-openapi';
import { requireOperator } from '../../domain/auth.js';
import { rotateOperatorToken } from '../../domain/operator.js';
import type { App, Deps } from '../context.js';
import { errors, ok, security, tokenSchema } from '../schemas.js';

export function registerOperatorRoutes(app: App, { store }: Deps): void {
  app.openapi(
    createRoute({
      method: 'post',
      path: '/api/v1/operator/rotate-token',
      tags: ['Operator'],
      security,
      summary: 'Replace the operator token; the old one stops working at once',
      responses: { 200: ok(tokenSchema, 'The new operator token, shown once'), ...errors },
    }),
    (c) => {
      requireOperator(c.get('principal'));
      return c.json({ token: rotateOperatorToken(store) }, 200);
    },
  );
}
